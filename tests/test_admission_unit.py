"""Admission control (frontend/admission.py) against a fake engine that holds requests: the request past a
pipeline's bound is a fast 429 with Retry-After, slots come back however a request ends, and the video
queue has its own bound."""

from __future__ import annotations

import asyncio
import http.client as httplib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frontend_fixtures import FakePipelines, assert_error_body, fake_frontend
from test_frontend_unit import SD_LIMITS, fake_images, http, post_json
from test_streaming_unit import STREAMING, VIDEO
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dgate.core.capabilities import Capabilities
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.admission import ADMISSION_FACTOR, Admission, parse_bounds
from dgate.frontend.engine import EngineError, PartialCallback, StepCallback
from dgate.frontend.errors import OpenAIError
from dgate.frontend.settings import FrontendSettings

BOUND = 2
PROMPT = {"model": "tiny-sd", "prompt": "a lighthouse", "size": "32x32", "num_inference_steps": 2}


class GateEngine(FakePipelines):
    """Every generation waits while `gate` is clear; `running` counts those inside, `failure` is raised
    once the gate opens."""

    def __init__(self) -> None:
        self.pipelines: dict[str, ServedPipeline] = {
            "tiny-sd": STREAMING, "tiny-other": ServedPipeline(SD_LIMITS, Capabilities()), "tiny-video": VIDEO}
        self.gate = threading.Event()
        self.running = 0
        self.failure: Exception | None = None
        self.reset()

    def reset(self) -> None:
        self.gate.set()
        self.failure = None

    async def ready(self) -> bool:
        return True

    async def generate(self, name: str, params: GenerationParams, *, on_step: StepCallback | None = None,
                       partial_images: int = 0, on_partial: PartialCallback | None = None,
                       **_: Any) -> np.ndarray:
        self.running += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        finally:
            self.running -= 1
        if self.failure is not None:
            raise self.failure
        if on_step is not None:
            await on_step(1, 1)
        return fake_images(params)

    async def generate_video(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("no video workers in these tests")


served, engine = fake_frontend(GateEngine)[:2]


@pytest.fixture(scope="module")
def frontend_settings(tmp_path_factory: pytest.TempPathFactory) -> FrontendSettings:
    root: Path = tmp_path_factory.mktemp("admission")
    return FrontendSettings(video_workers=0, max_in_flight_per_pipeline=f"tiny-sd={BOUND}", retry_after_s=3,
                            max_queued_video_jobs=2, jobs_db=f"sqlite://{root / 'jobs.db'}",
                            assets_dir=str(root / "assets"))


@pytest.fixture
def base_url(served: tuple[str, GateEngine]) -> str:
    return served[0]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def in_flight(base_url: str, model: str = "tiny-sd") -> float:
    text = http("GET", f"{base_url}/metrics")[2].decode()
    found = re.search(rf'^dgate_frontend_pipeline_requests_in_flight{{model="{model}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def refusals(base_url: str, kind: str) -> float:
    text = http("GET", f"{base_url}/metrics")[2].decode()
    pattern = rf'^dgate_frontend_admission_refusals_total{{kind="{kind}",model="[^"]+"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.M))


def held(base_url: str, engine: GateEngine, count: int, body: dict[str, Any] | None = None) -> list[threading.Thread]:
    """`count` requests started and held in the engine (the gate closed); join them after opening it."""
    engine.gate.clear()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(post_json(
        f"{base_url}/v1/images/generations", body or PROMPT)[0])) for _ in range(count)]
    for thread in threads:
        thread.start()
    wait_until(lambda: engine.running == count)
    return threads


def assert_busy(status: int, headers: Any, body: bytes) -> None:
    assert status == 429, body
    assert headers["Retry-After"] == "3"
    assert_error_body(body, code="pipeline_busy", param="model", type="server_error")


# --- the bound ------------------------------------------------------------------------------------------


def test_the_default_bound_derives_from_max_images_and_the_setting_overrides_it() -> None:
    admission = Admission()
    assert admission.bound("tiny-sd", STREAMING) == ADMISSION_FACTOR * SD_LIMITS.max_images
    assert parse_bounds("8") == (8, {})
    assert parse_bounds(" sd=3, 5 ,flux=1") == (5, {"sd": 3, "flux": 1})
    admission = Admission("tiny-sd=3,7")
    assert admission.bound("tiny-sd", STREAMING) == 3 and admission.bound("other", STREAMING) == 7
    for bad in ("x", "sd=0", "sd=two", "-1"):
        with pytest.raises(ValueError, match="DGATE_MAX_IN_FLIGHT_PER_PIPELINE"):
            parse_bounds(bad)


def test_slots_are_released_once_and_refusal_is_a_429() -> None:
    admission = Admission("1", retry_after_s=7)
    slot = admission.admit("m", STREAMING)
    with pytest.raises(OpenAIError) as refused:
        admission.admit("m", STREAMING)
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "7"}
    assert refused.value.code == "pipeline_busy"
    admission.admit("n", STREAMING).release()  # pipelines count apart
    slot.release()
    slot.release()
    assert admission.in_flight("m") == 0
    with admission.admit("m", STREAMING):
        assert admission.in_flight("m") == 1
    assert admission.in_flight("m") == 0


def test_the_request_past_the_bound_is_refused_fast_with_retry_after(base_url: str, engine: GateEngine) -> None:
    refused_before = refusals(base_url, "image")
    threads = held(base_url, engine, BOUND)
    assert in_flight(base_url) == BOUND
    started = time.monotonic()
    answer = post_json(f"{base_url}/v1/images/generations", PROMPT)
    assert time.monotonic() - started < 0.1
    assert_busy(*answer)
    assert refusals(base_url, "image") == refused_before + 1
    # Another pipeline has its own count; the default bound applies to it.
    other = threading.Thread(target=post_json, args=(f"{base_url}/v1/images/generations",
                                                     {**PROMPT, "model": "tiny-other"}))
    other.start()
    wait_until(lambda: engine.running == BOUND + 1)
    engine.gate.set()
    for thread in [*threads, other]:
        thread.join(10)
    assert in_flight(base_url) == 0
    assert post_json(f"{base_url}/v1/images/generations", PROMPT)[0] == 200


def test_slots_come_back_after_engine_errors(base_url: str, engine: GateEngine) -> None:
    engine.failure = EngineError("the pipeline failed")
    for _ in range(BOUND + 1):
        assert post_json(f"{base_url}/v1/images/generations", PROMPT)[0] == 500
    assert in_flight(base_url) == 0
    engine.failure = None
    threads = held(base_url, engine, BOUND)  # all BOUND slots are free
    engine.gate.set()
    for thread in threads:
        thread.join(10)


def test_a_client_that_disconnects_frees_its_slot(base_url: str, engine: GateEngine) -> None:
    engine.gate.clear()
    netloc = urllib.parse.urlsplit(base_url).netloc
    connection = httplib.HTTPConnection(netloc, timeout=10)
    connection.request("POST", "/v1/images/generations", json.dumps(PROMPT),
                       {"Content-Type": "application/json"})
    wait_until(lambda: engine.running == 1)
    assert in_flight(base_url) == 1
    connection.close()
    wait_until(lambda: engine.running == 0)  # cancelled in the engine
    wait_until(lambda: in_flight(base_url) == 0)


def test_streams_hold_their_slot_until_they_end(base_url: str, engine: GateEngine) -> None:
    # A stream read to its end.
    status, _, body = post_json(f"{base_url}/v1/images/generations", {**PROMPT, "stream": True})
    assert status == 200 and b"image_generation.completed" in body
    assert in_flight(base_url) == 0
    # Streams held count against the bound; one closed by its client gives its slot back.
    engine.gate.clear()
    netloc = urllib.parse.urlsplit(base_url).netloc
    connections = []
    for _ in range(BOUND):
        connection = httplib.HTTPConnection(netloc, timeout=10)
        connection.request("POST", "/v1/images/generations", json.dumps({**PROMPT, "stream": True}),
                           {"Content-Type": "application/json"})
        connections.append(connection)
    wait_until(lambda: engine.running == BOUND)
    assert_busy(*post_json(f"{base_url}/v1/images/generations", {**PROMPT, "stream": True}))
    for connection in connections:
        connection.close()
    wait_until(lambda: engine.running == 0)
    wait_until(lambda: in_flight(base_url) == 0)
    # A stream whose work fails ends with an error event, and frees its slot too.
    engine.gate.set()
    engine.failure = EngineError("the pipeline failed")
    status, _, body = post_json(f"{base_url}/v1/images/generations", {**PROMPT, "stream": True})
    assert status == 200 and b"event: error" in body
    assert in_flight(base_url) == 0


def test_the_websocket_past_the_bound_gets_the_429_body_and_1008(base_url: str, engine: GateEngine) -> None:
    threads = held(base_url, engine, BOUND)
    with connect(base_url.replace("http://", "ws://") + "/v1/ws/generate", open_timeout=10) as websocket:
        websocket.send(json.dumps(PROMPT))
        message = json.loads(websocket.recv(timeout=5))
        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=5)
        assert websocket.close_code == 1008
    assert message["type"] == "error" and message["error"]["code"] == "pipeline_busy"
    engine.gate.set()
    for thread in threads:
        thread.join(10)
    with connect(base_url.replace("http://", "ws://") + "/v1/ws/generate", open_timeout=10) as websocket:
        websocket.send(json.dumps(PROMPT))
        messages = [json.loads(websocket.recv(timeout=5)) for _ in range(2)]
    assert [m["type"] for m in messages] == ["progress", "result"]
    assert in_flight(base_url) == 0


# --- the video queue ------------------------------------------------------------------------------------


def test_the_video_queue_has_its_own_bound(base_url: str) -> None:
    video = {"model": "tiny-video", "prompt": "waves", "seconds": "1", "size": "32x32"}
    refused_before = refusals(base_url, "video")
    created = [post_json(f"{base_url}/v1/videos", video) for _ in range(2)]  # no workers: they stay queued
    assert [status for status, _, _ in created] == [200, 200]
    status, headers, body = post_json(f"{base_url}/v1/videos", video)
    assert status == 429 and headers["Retry-After"] == "3"
    assert_error_body(body, code="queue_full", type="server_error")
    assert refusals(base_url, "video") == refused_before + 1
    first = json.loads(created[0][2])["id"]
    assert http("DELETE", f"{base_url}/v1/videos/{first}")[0] == 200
    assert post_json(f"{base_url}/v1/videos", video)[0] == 200
