"""The LoRA registry in the job database (frontend/jobs/lora_store.py, frontend/lora_registry.py), over one
SQLite file and over one real PostgreSQL: two frontends (replicas) see each other's `set_lora`, merges
and unloads; a new frontend (a restart) keeps the active adapters and the merge; concurrent changes on
both replicas take turns, the Triton-side check included (no two checks overlap, every answer shows
the state its own change made, the last change to take the lock is what stays); a refused change and
a cancelled one leave the state as it was and the lock free."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_frontend_unit import FakeEngine

from dgate.core.errors import InvalidRequestError
from dgate.core.lora.request import AdapterRef, decode_adapters
from dgate.frontend.app import create_app
from dgate.frontend.jobs.lora_store import ActiveAdapter, LoraState, open_lora_store
from dgate.frontend.settings import FrontendSettings

ADAPTERS = [f"a{i}" for i in range(8)]


class CheckingEngine(FakeEngine):
    """FakeEngine + `dgate_lora`'s check: the files must exist; each check takes a while (so that
    unserialised calls would overlap) and records when it ran. One engine serves both replicas."""

    def __init__(self, lora_dir: Path, check_s: float = 0.0) -> None:
        super().__init__()
        self.lora_dir, self.check_s = lora_dir, check_s
        self.checks: list[tuple[str, float, float]] = []  # (lora text, start, end)
        self._lock = threading.Lock()

    async def check_adapters(self, name: str, lora: str) -> dict:
        await self.served_pipeline(name)
        start = time.monotonic()
        await asyncio.sleep(self.check_s)
        refs = decode_adapters(lora)
        for ref in refs:
            if not (self.lora_dir / ref.path).is_file():
                raise InvalidRequestError(f"no adapter {ref.path!r}", "lora_path")
        with self._lock:
            self.checks.append((lora, start, time.monotonic()))
        return {"pipeline": name, "adapters": [{"path": ref.path} for ref in refs]}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "loras"
    directory.mkdir()
    for name in ADAPTERS:
        (directory / f"{name}.safetensors").write_bytes(b"fake adapter")  # the fake engine never reads it
    return directory


@pytest.fixture
def prefix() -> str:
    return f"lora_{uuid.uuid4().hex[:8]}"  # one state table per test: the PostgreSQL server is the session's


def replica(tmp_path: Path, name: str, engine: FakeEngine, db_url: str, lora_dir: Path, prefix: str) -> TestClient:
    settings = FrontendSettings(video_workers=0, default_model="tiny-sd", jobs_db=db_url, lora_dir=str(lora_dir),
                                assets_dir=str(tmp_path / name / "assets"))
    app = create_app(settings, engine)  # a fake: part of Engine
    app.state.dgate.loras.prefix = prefix  # before the lifespan opens the store
    return TestClient(app)


@pytest.fixture
def replicas(tmp_path: Path, db_url: str, lora_dir: Path, prefix: str) -> Iterator[tuple[TestClient, TestClient,
                                                                                        CheckingEngine]]:
    engine = CheckingEngine(lora_dir, check_s=0.02)
    with replica(tmp_path, "a", engine, db_url, lora_dir, prefix) as a, \
            replica(tmp_path, "b", engine, db_url, lora_dir, prefix) as b:
        yield a, b, engine


def sent(client: TestClient, engine: FakeEngine, **body: Any) -> tuple[AdapterRef, ...]:
    """The adapters a generation without its own `lora` (or with `body`'s) reached the engine with."""
    answer = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64"} | body)
    assert answer.status_code == 200, answer.text
    return decode_adapters(engine.calls[-1][1].lora)


def test_two_replicas_share_set_lora_merges_and_unloads_and_a_restart_keeps_them(
        tmp_path: Path, db_url: str, lora_dir: Path, prefix: str) -> None:
    engine = CheckingEngine(lora_dir)
    with replica(tmp_path, "a", engine, db_url, lora_dir, prefix) as a, \
            replica(tmp_path, "b", engine, db_url, lora_dir, prefix) as b:
        assert sent(b, engine) == ()
        answer = a.post("/v1/set_lora", json={"lora_nickname": "fox", "lora_path": "a0.safetensors", "strength": 0.8})
        assert answer.status_code == 200, answer.text
        assert sent(b, engine) == (AdapterRef("a0.safetensors", 0.8),)  # set on a, applied by b, the nickname known
        assert sent(b, engine, lora="fox", lora_scale=0.5) == (AdapterRef("a0.safetensors", 0.5),)
        merged = b.post("/v1/merge_lora_weights", json={"strength": 0.6})
        assert merged.status_code == 200 and merged.json()["active"]["all"][0]["merged"], merged.text
        refused = a.post("/v1/set_lora", json={"lora_nickname": "a1"})  # a sees b's merge
        assert refused.status_code == 400 and "unmerge" in refused.json()["error"]["message"]
        assert sent(a, engine) == (AdapterRef("a0.safetensors", 0.6),)
        assert a.post("/v1/loras/load", json={"name": "spare", "path": "a2.safetensors"}).status_code == 200
        assert {"name": "spare", "path": "a2.safetensors", "active_on": []} in b.get("/v1/loras/list").json()["data"]
        before = a.get("/v1/list_loras").json()
        assert b.get("/v1/list_loras").json() == before
    with replica(tmp_path, "c", engine, db_url, lora_dir, prefix) as restarted:
        assert restarted.get("/v1/list_loras").json() == before  # the merge and the nicknames survive
        assert sent(restarted, engine) == (AdapterRef("a0.safetensors", 0.6),)
        assert restarted.post("/v1/unmerge_lora_weights").status_code == 200
        assert restarted.delete("/v1/loras/fox").json()["deleted"]
        assert restarted.post("/v1/loras/unload", json={"name": "spare"}).status_code == 200
        assert sent(restarted, engine) == () and restarted.get("/v1/loras/list").json()["data"] == []
    with replica(tmp_path, "d", engine, db_url, lora_dir, prefix) as again:
        assert again.delete("/v1/loras/fox").status_code == 404  # the unload survived too


def test_concurrent_set_lora_on_two_replicas_take_turns(
        replicas: tuple[TestClient, TestClient, CheckingEngine]) -> None:
    a, b, engine = replicas

    def set_one(index: int) -> dict[str, Any]:
        client = (a, b)[index % 2]
        answer = client.post("/v1/set_lora", json={"lora_nickname": ADAPTERS[index], "strength": 0.5})
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(len(ADAPTERS)) as pool:
        answers = list(pool.map(set_one, range(len(ADAPTERS))))
    checks = sorted(engine.checks, key=lambda check: check[1])
    assert len(checks) == len(ADAPTERS)
    for earlier, later in zip(checks, checks[1:], strict=False):  # each check ran alone, on either replica
        assert earlier[2] <= later[1], f"checks overlapped: {earlier} and {later}"
    order = [decode_adapters(lora)[0].path.removesuffix(".safetensors") for lora, _, _ in checks]
    by_nickname = {answer["active"]["all"][0]["nickname"]: answer for answer in answers}
    assert sorted(by_nickname) == sorted(ADAPTERS)  # every answer shows its own change as the active set
    for position, nickname in enumerate(order):  # ... on the state the changes before it made: nothing lost
        loaded = {entry["nickname"] for entry in by_nickname[nickname]["loaded_adapters"]}
        assert loaded == set(order[:position + 1]), (nickname, loaded)
    final = a.get("/v1/list_loras").json()
    assert final == b.get("/v1/list_loras").json()
    assert [entry["nickname"] for entry in final["active"]["all"]] == [order[-1]]  # the last to take the lock
    assert sent(a, engine) == sent(b, engine) == (AdapterRef(f"{order[-1]}.safetensors", 0.5),)


def test_a_refused_change_keeps_the_state_and_frees_the_lock(
        replicas: tuple[TestClient, TestClient, CheckingEngine]) -> None:
    a, b, engine = replicas
    assert a.post("/v1/set_lora", json={"lora_nickname": "a0"}).status_code == 200
    before = b.get("/v1/list_loras").json()
    refused = b.post("/v1/set_lora", json={"lora_nickname": ["a1", "missing"],
                                           "lora_path": ["a1.safetensors", "missing.safetensors"]})
    assert refused.status_code == 400, refused.text
    assert a.get("/v1/list_loras").json() == before
    assert a.delete("/v1/loras/nobody").status_code == 404  # a 404 inside the change: the lock is freed
    assert b.post("/v1/set_lora", json={"lora_nickname": "a2"}).status_code == 200
    assert sent(a, engine) == (AdapterRef("a2.safetensors", 1.0),)


async def test_a_cancelled_change_rolls_back_and_the_next_one_runs(db_url: str, prefix: str) -> None:
    first, second = await open_lora_store(db_url, prefix=prefix), await open_lora_store(db_url, prefix=prefix)
    try:
        started = asyncio.Event()

        async def hang(current: LoraState) -> LoraState:
            started.set()
            await asyncio.sleep(60)
            return current

        task = asyncio.create_task(first.update(hang))
        await started.wait()

        async def add(current: LoraState) -> LoraState:
            return current.with_active("tiny-sd", (ActiveAdapter("x", "x.safetensors", 1.0),))

        waiting = asyncio.create_task(second.update(add))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the other store waits for the lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stored = await asyncio.wait_for(waiting, 10)
        assert stored.version == 1 and await first.version() == 1  # the cancelled change wrote nothing
        assert (await first.read()).active["tiny-sd"][0].nickname == "x"
    finally:
        await first.close()
        await second.close()
