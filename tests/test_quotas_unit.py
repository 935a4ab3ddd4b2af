"""Per-key quotas (frontend/quotas.py, frontend/jobs/quota_store.py) against fake engines: requests per minute
(429 with Retry-After and OpenAI's x-ratelimit-* headers, reset in the next minute), requests in flight (a
slow engine, a stream held to its end), megapixels per day (images and video frames, reset the next day),
the stores' atomic checks and expiring leases on SQLite and PostgreSQL, and two frontends over one
PostgreSQL sharing each quota."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_auth_unit import AuthEngine
from test_frontend_unit import FakeEngine
from test_videos_unit import video_settings

from dgate.core.params import GenerationParams
from dgate.frontend.app import create_app
from dgate.frontend.jobs.quota_store import QuotaStore, open_quota_store
from dgate.frontend.quotas import DAY, Quotas, reset_duration

T0 = 1_700_000_000.0  # 20 s into its minute (40 s left), 80000 s into its UTC day (6400 s left)
KEYS = ",".join([
    "key-rpm name=rpm requests_per_minute=3",
    "key-flight name=flight in_flight=1",
    "key-mp name=mp megapixels_per_day=0.02",  # 64x64 is 0.004096 MP: four images fit, a fifth does not
    "key-free name=free",
])
GENERATION = {"model": "tiny-sd", "prompt": "a fox", "size": "64x64", "num_inference_steps": 2}


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class SlowEngine(FakeEngine):
    """Generations wait for `release` (set from the test's thread); `started` counts those that wait."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    async def generate(self, name: str, params: GenerationParams, **kw: Any) -> np.ndarray:
        if not self.release.is_set():
            self.started.release()
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        return await super().generate(name, params)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_client(tmp_path: Path, engine: Any, clock: FakeClock, prefix: str, **settings: Any) -> TestClient:
    values: dict[str, Any] = {"api_keys": KEYS, "video_workers": 0, "default_model": "tiny-sd"} | settings
    app = create_app(video_settings(tmp_path, **values), engine)
    quotas: Quotas = app.state.quotas
    quotas.clock, quotas.prefix = clock, prefix  # before the lifespan opens the store
    return TestClient(app)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def slow() -> SlowEngine:
    return SlowEngine()


@pytest.fixture
def client(tmp_path: Path, slow: SlowEngine, clock: FakeClock) -> Iterator[TestClient]:
    slow.release.set()
    with open_client(tmp_path, slow, clock, "quota") as test_client:
        yield test_client


def assert_429(response: httpx.Response, kind: str, retry_after: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == kind
    assert response.headers["retry-after"] == retry_after


def request_headers(response: httpx.Response) -> tuple[str, str, str]:
    return (response.headers["x-ratelimit-limit-requests"], response.headers["x-ratelimit-remaining-requests"],
            response.headers["x-ratelimit-reset-requests"])


def test_reset_durations_are_written_as_openai_does() -> None:
    assert [reset_duration(s) for s in (0.02, 1, 40, 59.2, 360, 6400)] == [
        "20ms", "1s", "40s", "1m0s", "6m0s", "1h46m40s"]


# --- requests per minute ----------------------------------------------------------------------------------


def test_requests_per_minute_answer_429_with_headers_and_reset_in_the_next_minute(
        client: TestClient, clock: FakeClock) -> None:
    answers = [client.get("/v1/models", headers=bearer("key-rpm")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [request_headers(a) for a in answers] == [("3", "2", "40s"), ("3", "1", "40s"), ("3", "0", "40s")]
    over = client.post("/v1/images/generations", headers=bearer("key-rpm"), json=GENERATION)
    assert_429(over, "requests", "40")
    assert request_headers(over) == ("3", "0", "40s")
    assert "requests per minute" in over.json()["error"]["message"]
    clock.now += 39
    assert_429(client.get("/v1/models", headers=bearer("key-rpm")), "requests", "1")
    clock.now += 1  # the next minute
    again = client.post("/v1/images/generations", headers=bearer("key-rpm"), json=GENERATION)
    assert again.status_code == 200 and request_headers(again) == ("3", "2", "1m0s")


def test_headers_on_success_keys_without_limits_and_the_default_for_keys_without_their_own(
        tmp_path: Path, clock: FakeClock) -> None:
    engine = FakeEngine()
    with open_client(tmp_path, engine, clock, "quota") as client:
        assert "x-ratelimit-limit-requests" not in client.get("/v1/models", headers=bearer("key-free")).headers
        ok = client.post("/v1/images/generations", headers=bearer("key-rpm"), json=GENERATION)
        assert ok.status_code == 200 and request_headers(ok) == ("3", "2", "40s")
        assert "x-ratelimit-limit-requests" not in client.get("/health").headers  # open routes are not counted
    with open_client(tmp_path / "defaults", engine, clock, "quota", quota_requests_per_minute=5) as client:
        assert request_headers(client.get("/v1/models", headers=bearer("key-free"))) == ("5", "4", "40s")
        assert request_headers(client.get("/v1/models", headers=bearer("key-rpm"))) == ("3", "2", "40s")
    settings = video_settings(tmp_path / "off", api_keys=None, quota_requests_per_minute=1, video_workers=0)
    with TestClient(create_app(settings, engine)) as client:  # auth off: no quotas
        assert all(client.get("/v1/models").status_code == 200 for _ in range(3))


# --- requests in flight -----------------------------------------------------------------------------------


def test_in_flight_is_held_until_the_response_ends_streams_included(
        tmp_path: Path, slow: SlowEngine, clock: FakeClock) -> None:
    with open_client(tmp_path, slow, clock, "quota") as client, ThreadPoolExecutor(2) as pool:
        for stream in (False, True):
            slow.release.clear()
            first: Future[httpx.Response] = pool.submit(
                client.post, "/v1/images/generations", headers=bearer("key-flight"), json=GENERATION | {
                    "stream": stream})
            assert slow.started.acquire(timeout=10)
            assert_429(client.get("/v1/models", headers=bearer("key-flight")), "requests", "1")
            assert client.get("/v1/models", headers=bearer("key-free")).status_code == 200  # another key's
            slow.release.set()
            assert first.result(timeout=10).status_code == 200
            assert client.get("/v1/models", headers=bearer("key-flight")).status_code == 200  # released


# --- megapixels per day -----------------------------------------------------------------------------------


def test_megapixels_per_day_count_n_x_width_x_height_and_reset_the_next_day(
        client: TestClient, slow: SlowEngine, clock: FakeClock) -> None:
    ok = client.post("/v1/images/generations", headers=bearer("key-mp"), json=GENERATION | {"n": 4})
    assert ok.status_code == 200  # 0.016384 of 0.02
    calls = len(slow.calls)
    over = client.post("/v1/images/generations", headers=bearer("key-mp"), json=GENERATION)
    assert_429(over, "megapixels", "6400")
    assert "used 0.016384, requested 0.004096" in over.json()["error"]["message"]
    assert len(slow.calls) == calls  # refused before the engine
    clock.now += 6400  # the next UTC day
    assert client.post("/v1/images/generations", headers=bearer("key-mp"), json=GENERATION).status_code == 200


async def test_video_and_websocket_megapixels_are_charged(tmp_path: Path, clock: FakeClock) -> None:
    keys = "key-video name=video megapixels_per_day=1,key-tiny name=tiny megapixels_per_day=0.001"
    app = create_app(video_settings(tmp_path, api_keys=keys, video_workers=0), AuthEngine())
    app.state.quotas.clock = clock
    with TestClient(app) as client:
        body = {"model": "tiny-animatediff", "prompt": "a fox", "size": "64x48"}
        created = client.post("/v1/videos", headers=bearer("key-video"), json=body)
        assert created.status_code == 200, created.text
        job = await app.state.dgate.videos.store.get(created.json()["id"])
        frames = job.request["num_frames"]
        store: QuotaStore = app.state.quotas.store
        key = await app.state.dgate.keys.verify("key-video")
        assert await store.used(key.id, "megapixels", int(T0 // DAY)) == pytest.approx(frames * 64 * 48 / 1e6)
        refused = client.post("/v1/videos", headers=bearer("key-tiny"), json=body)  # more than its whole day
        assert_429(refused, "megapixels", "6400")
        assert len(client.get("/v1/videos", headers=bearer("key-tiny")).json()["data"]) == 0
        # The WebSocket's generations are charged too: the 429's body, then the close.
        with client.websocket_connect("/v1/ws/generate", headers=bearer("key-tiny")) as ws:
            ws.send_json(GENERATION)
            error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == "rate_limit_exceeded"
        assert error["error"]["type"] == "megapixels"


# --- the stores: atomic checks and expiring leases -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def test_two_stores_never_pass_a_limit_together_and_leases_expire(db_url: str) -> None:
    prefix = f"quota_{uuid.uuid4().hex[:12]}"
    stores = [await open_quota_store(db_url, prefix=prefix) for _ in range(2)]  # two processes or replicas
    try:
        added = await asyncio.gather(*(stores[i % 2].add("key", "requests", 7, 1, 10) for i in range(16)))
        assert sorted(a for a in added if a is not None) == [float(n) for n in range(1, 11)]
        assert added.count(None) == 6 and await stores[1].used("key", "requests", 7) == 10
        assert await stores[0].add("key", "requests", 8, 1, 10) == 1  # a new window starts from zero
        assert await stores[0].used("key", "requests", 7) == 0  # (the old one is gone)
        taken = await asyncio.gather(*(stores[i % 2].acquire("key", f"lease{i}", 3, T0, T0 + 60) for i in range(6)))
        assert sorted(t for t in taken if t is not None) == [1, 2, 3] and taken.count(None) == 3
        held = [f"lease{i}" for i, t in enumerate(taken) if t is not None]
        await stores[1].release(held[0])
        assert await stores[0].acquire("key", "again", 3, T0, T0 + 60) == 3
        assert await stores[0].acquire("other", "x", 1, T0, T0 + 60) == 1  # per key
        await stores[0].renew(held[1], T0 + 120)
        # The replica holding the others crashed: past their expiry only the renewed lease is left.
        assert await stores[1].acquire("key", "late", 3, T0 + 61, T0 + 121) == 2
    finally:
        for store in stores:
            await store.close()


# --- two frontends over one PostgreSQL --------------------------------------------------------------------------


def test_two_frontends_over_one_postgresql_share_each_quota(
        tmp_path: Path, postgres_url: str, slow: SlowEngine, clock: FakeClock) -> None:
    prefix = f"quota_{uuid.uuid4().hex[:12]}"
    slow.release.set()
    with open_client(tmp_path / "a", slow, clock, prefix, jobs_db=postgres_url) as a, \
            open_client(tmp_path / "b", slow, clock, prefix, jobs_db=postgres_url) as b, \
            ThreadPoolExecutor(1) as pool:
        answers = [(a, b)[i % 2].get("/v1/models", headers=bearer("key-rpm")) for i in range(3)]
        assert [request_headers(r)[1] for r in answers] == ["2", "1", "0"]  # one count across both
        assert_429(a.get("/v1/models", headers=bearer("key-rpm")), "requests", "40")
        assert_429(b.get("/v1/models", headers=bearer("key-rpm")), "requests", "40")

        assert a.post("/v1/images/generations", headers=bearer("key-mp"), json=GENERATION | {"n": 4}).status_code == 200
        assert_429(b.post("/v1/images/generations", headers=bearer("key-mp"), json=GENERATION), "megapixels", "6400")

        slow.release.clear()
        first = pool.submit(a.post, "/v1/images/generations", headers=bearer("key-flight"), json=GENERATION)
        assert slow.started.acquire(timeout=10)
        assert_429(b.get("/v1/models", headers=bearer("key-flight")), "requests", "1")
        slow.release.set()
        assert first.result(timeout=10).status_code == 200
        assert b.get("/v1/models", headers=bearer("key-flight")).status_code == 200
