"""The generation metrics of /metrics (frontend/metrics.py) after real traffic to the frontend on a fake
engine, over HTTP and the WebSocket: request counts, histogram counts and counters equal what was sent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from frontend_fixtures import start_frontend
from prometheus_client.parser import text_string_to_metric_families
from test_streaming_unit import SteppingEngine, png
from test_videos_unit import T2V_LIMITS, fake_frames, video_settings
from websockets.sync.client import connect

from dgate.core.capabilities import Capabilities
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.engine import EngineError, ProgressCallback
from dgate.frontend.settings import FrontendSettings

HISTOGRAMS = ("generation", "queue", "triton", "encode")


class MetricsEngine(SteppingEngine):
    """Images step by step (SSE, edits, the WebSocket), a text-to-video pipeline and the adapter check."""

    def __init__(self) -> None:
        super().__init__()
        self.pipelines["tiny-animatediff"] = ServedPipeline(T2V_LIMITS, Capabilities(task="text-to-video"))
        self.video_calls: list[GenerationParams] = []
        self.video_failure: Exception | None = None

    async def generate_video(self, name: str, params: GenerationParams, image: np.ndarray | None,
                             on_progress: ProgressCallback | None = None) -> np.ndarray:
        self.video_calls.append(params)
        for step in range(params.num_inference_steps):
            await asyncio.sleep(0.001)
            if on_progress is not None:
                await on_progress((step + 1) / params.num_inference_steps)
        if self.video_failure is not None:
            raise self.video_failure
        return fake_frames(params, image)

    async def check_adapters(self, name: str, lora: str) -> dict:
        return {"pipeline": name, "adapters": [{"path": "fox.safetensors", "bytes": 12}]}


def settings_in(root: Path, **overrides: Any) -> FrontendSettings:
    (root / "loras").mkdir(exist_ok=True)
    (root / "loras" / "fox.safetensors").write_bytes(b"fake adapter")
    return video_settings(root, lora_dir=str(root / "loras"), default_model="tiny-sd", **overrides)


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[tuple[httpx.Client, MetricsEngine]]:
    """A fresh frontend (fresh metrics) per test."""
    engine = MetricsEngine()
    base_url, stop = start_frontend(settings_in(tmp_path), engine)  # type: ignore[arg-type]  # a fake engine
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http, engine
    stop()


def scrape(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of one /metrics scrape."""
    response = http.get("/metrics")
    assert response.status_code == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def count(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], histogram: str, **labels: str) -> float:
    return value(samples, f"dgate_frontend_{histogram}_seconds_count", **labels)


def sse_types(response: httpx.Response) -> list[str]:
    return [json.loads(line[6:])["type"] for line in response.text.splitlines() if line.startswith("data: ")]


def test_image_traffic_is_counted_by_model_kind_and_status(frontend: tuple[httpx.Client, MetricsEngine]) -> None:
    http, engine = frontend
    ok = {"model": "tiny-sd", "kind": "image", "status": "ok"}
    image = {"model": "tiny-sd", "kind": "image"}
    # Unary n=2, a stream with a preview, an edit, a request with an adapter, the WebSocket: 5 ok.
    generate = {"prompt": "a fox", "size": "64x48", "num_inference_steps": 6}
    assert len(http.post("/v1/images/generations", json=generate | {"n": 2}).json()["data"]) == 2
    streamed = http.post("/v1/images/generations", json=generate | {"stream": True, "partial_images": 1})
    assert sse_types(streamed) == ["image_generation.partial_image", "image_generation.completed"]
    edited = http.post("/v1/images/edits", data={"prompt": "snow", "strength": "0.5", "num_inference_steps": "6"},
                       files={"image": ("a.png", png(np.full((48, 64, 3), 90, np.uint8)), "image/png")})
    assert edited.status_code == 200, edited.text
    assert http.post("/v1/images/generations", json=generate | {"lora": "fox"}).status_code == 200
    ws_url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/v1/ws/generate"
    with connect(ws_url, open_timeout=10, close_timeout=5) as websocket:
        websocket.send(json.dumps(generate | {"n": 1}))
        while json.loads(websocket.recv(timeout=10))["type"] != "result":
            pass
    # An engine failure (500 engine_error) and a request refused before any work (400: not recorded).
    engine.failure = EngineError("the engine broke")
    failed = http.post("/v1/images/generations", json=generate)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "engine_error"
    engine.failure = None
    assert http.post("/v1/images/generations", json=generate | {"n": 99}).status_code == 400

    samples = scrape(http)
    assert count(samples, "generation", **ok) == 5
    assert count(samples, "generation", **(image | {"status": "engine_error"})) == 1
    assert count(samples, "queue", **image) == 6  # the failure reached Triton too
    assert count(samples, "triton", **image) == 5 and count(samples, "encode", **image) == 5
    for histogram in HISTOGRAMS:  # seconds-long buckets, up to 20 minutes
        assert (f"dgate_frontend_{histogram}_seconds_bucket", frozenset((image | {"le": "1200.0"}).items())) in {
            (name, labels - {("status", "ok")}) for name, labels in samples}
    assert value(samples, "dgate_frontend_generation_seconds_sum", **ok) > 0
    # Work done, from what the engine was asked (an edit runs int(steps x strength) steps).
    calls = [call.params for call in engine.calls if call.name == "tiny-sd"]
    assert len(calls) == 6
    done = calls[:4] + calls[5:]  # the fifth call (after the WebSocket's) failed
    assert value(samples, "dgate_frontend_steps_total", **image) == sum(int(p.num_inference_steps * p.strength)
                                                                        for p in done) == 6 + 6 + 3 + 6 + 6
    assert value(samples, "dgate_frontend_images_generated_total", model="tiny-sd") == 6
    assert value(samples, "dgate_frontend_megapixels_generated_total", **image) == pytest.approx(6 * 64 * 48 / 1e6)
    assert value(samples, "dgate_frontend_lora_adapters_used_total", model="tiny-sd") == 1
    assert value(samples, "dgate_frontend_video_frames_total", model="tiny-sd") == 0


def test_admission_refusals_are_recorded_with_their_code(tmp_path: Path) -> None:
    engine = MetricsEngine()
    base_url, stop = start_frontend(settings_in(tmp_path, max_in_flight_per_pipeline="1"), engine)  # type: ignore[arg-type]
    try:
        engine.block = True  # the first request holds the pipeline's one slot
        with httpx.Client(base_url=base_url, timeout=30) as http:
            with httpx.Client(base_url=base_url, timeout=30) as other:
                held = other.build_request("POST", "/v1/images/generations", json={"prompt": "a", "stream": True})
                response = other.send(held, stream=True)
                assert engine.started.wait(10)
                busy = http.post("/v1/images/generations", json={"prompt": "b"})
                assert busy.status_code == 429
                response.close()
            deadline = time.monotonic() + 10
            while count(samples := scrape(http), "generation", model="tiny-sd", kind="image",
                        status="cancelled") < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        image = {"model": "tiny-sd", "kind": "image"}
        assert count(samples, "generation", **(image | {"status": "pipeline_busy"})) == 1
        assert count(samples, "generation", **(image | {"status": "cancelled"})) == 1  # the client went away
        assert count(samples, "triton", **image) == 0  # neither came back from Triton
        assert value(samples, "dgate_frontend_images_generated_total", model="tiny-sd") == 0
    finally:
        stop()


def wait_video(http: httpx.Client, video_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (job := http.get(f"/v1/videos/{video_id}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def test_video_jobs_are_counted_from_creation_to_completion(frontend: tuple[httpx.Client, MetricsEngine]) -> None:
    http, engine = frontend
    video = {"model": "tiny-animatediff", "kind": "video"}
    created = http.post("/v1/videos", json={"model": "tiny-animatediff", "prompt": "waves", "size": "64x48"}).json()
    assert wait_video(http, created["id"])["status"] == "completed"
    engine.video_failure = EngineError("out of memory")
    failing = http.post("/v1/videos", json={"model": "tiny-animatediff", "prompt": "fire", "size": "64x48"}).json()
    assert wait_video(http, failing["id"])["status"] == "failed"

    samples = scrape(http)
    assert count(samples, "generation", **(video | {"status": "ok"})) == 1
    assert count(samples, "generation", **(video | {"status": "generation_failed"})) == 1
    assert count(samples, "queue", **video) == 2 and count(samples, "triton", **video) == 1
    assert count(samples, "encode", **video) == 1
    params = engine.video_calls[0]
    assert value(samples, "dgate_frontend_video_frames_total", model="tiny-animatediff") == params.num_frames == 8
    assert value(samples, "dgate_frontend_steps_total", **video) == params.num_inference_steps
    assert value(samples, "dgate_frontend_megapixels_generated_total", **video) == pytest.approx(8 * 64 * 48 / 1e6)
    assert value(samples, "dgate_frontend_video_jobs_total", model="tiny-animatediff", status="completed") == 1
    # The job store's states, counted at the scrape: nothing waits now.
    assert value(samples, "dgate_frontend_video_jobs", state="queued") == 0
    if ("dgate_frontend_video_jobs", frozenset({("state", "completed")})) in samples:  # a store counting them all
        assert value(samples, "dgate_frontend_video_jobs", state="completed") == 1
        assert value(samples, "dgate_frontend_video_jobs", state="failed") == 1


def test_the_video_jobs_gauge_counts_the_queue_at_each_scrape(tmp_path: Path) -> None:
    base_url, stop = start_frontend(settings_in(tmp_path, video_workers=0), MetricsEngine())  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            assert value(scrape(http), "dgate_frontend_video_jobs", state="queued") == 0
            for prompt in ("a", "b"):  # no worker on this replica: they wait
                assert http.post("/v1/videos", json={"model": "tiny-animatediff", "prompt": prompt}).status_code == 200
            assert value(scrape(http), "dgate_frontend_video_jobs", state="queued") == 2
    finally:
        stop()


def test_lora_switches_count_changes_of_the_active_set(frontend: tuple[httpx.Client, MetricsEngine]) -> None:
    http, _ = frontend
    assert http.post("/v1/loras/load", json={"name": "fox"}).status_code == 200  # loaded, not active: no switch
    assert http.post("/v1/set_lora", json={"lora_nickname": "fox"}).status_code == 200
    assert http.post("/v1/merge_lora_weights", json={}).status_code == 200
    assert http.post("/v1/unmerge_lora_weights", json={}).status_code == 200
    assert http.post("/v1/loras/unload", json={"name": "fox"}).status_code == 200  # active on tiny-sd: a switch
    assert http.post("/v1/set_lora", json={"lora_nickname": "nobody", "lora_path": "../x"}).status_code == 400
    assert value(scrape(http), "dgate_frontend_lora_switches_total", model="tiny-sd") == 4
