"""Every way a request can end early stops its work in Triton (issue 18, (g)): a timed-out request, a
client that disconnects, a dropped WebSocket and a failing encoder, in the blocking design (tiny-sd:
one infer call) and the async one (tiny-sd-async: the gRPC stream). Proven from Triton's statistics:
the UNet runs far fewer steps than asked, then nothing more."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
from frontend_fixtures import assert_error_body, start_frontend

from dgate.frontend.settings import FrontendSettings

BLOCKING, ASYNC = "tiny-sd", "tiny-sd-async"
STEPS, IMAGES = 100, 10  # ~10 s of UNet work on 2 CPU cores: every early end below comes within ~2 s
LONG = {"prompt": "a fox", "size": "64x64", "n": IMAGES, "num_inference_steps": STEPS, "seed": 3}
TIMEOUT_S = 1.5


def unet_rows(triton: Any, model: str) -> int:
    """UNet batch rows run so far (two CFG rows per image per step)."""
    with grpcclient.InferenceServerClient(triton.ports.grpc_url) as client:
        stats = client.get_inference_statistics(f"{model}_unet", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0))


def assert_stopped(triton: Any, model: str, before: int) -> int:
    """The UNet ran some steps, then stopped well before the STEPS asked: returns the steps run."""
    time.sleep(1.5)  # the frontend notices within 0.1 s, the denoiser at its next step
    ran = unet_rows(triton, model) - before
    time.sleep(1.0)
    assert unet_rows(triton, model) - before == ran, "the UNet still runs"
    steps = ran / (2 * IMAGES)
    assert 0 < steps < STEPS * 0.6, steps
    return int(steps)


@pytest.fixture(scope="module")
def short_frontend(triton: Any) -> Iterator[str]:
    """A frontend whose requests time out after TIMEOUT_S."""
    base_url, stop = start_frontend(FrontendSettings(triton_url=triton.ports.grpc_url, request_timeout_s=TIMEOUT_S))
    yield base_url
    stop()


@pytest.mark.parametrize("model", [BLOCKING, ASYNC])
def test_a_timed_out_request_is_a_504_and_stops_the_unet(triton: Any, short_frontend: str, model: str) -> None:
    before = unet_rows(triton, model)
    response = httpx.post(f"{short_frontend}/v1/images/generations", json=LONG | {"model": model}, timeout=30)
    assert response.status_code == 504, response.text
    assert_error_body(response.content, code="timeout")
    assert_stopped(triton, model, before)


@pytest.mark.parametrize("model", [BLOCKING, ASYNC])
def test_a_client_that_disconnects_stops_the_unet(triton: Any, frontend: str, model: str) -> None:
    before = unet_rows(triton, model)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{frontend}/v1/images/generations", json=LONG | {"model": model}, timeout=TIMEOUT_S)
    assert_stopped(triton, model, before)


def test_a_dropped_websocket_stops_the_unet(triton: Any, frontend: str) -> None:
    from websockets.sync.client import connect

    before = unet_rows(triton, ASYNC)
    with connect(f"{frontend.replace('http', 'ws', 1)}/v1/ws/generate") as socket:
        socket.send(json.dumps(LONG | {"model": ASYNC}))
        assert json.loads(socket.recv(timeout=60))["type"] == "progress"  # running: then the client drops
    assert_stopped(triton, ASYNC, before)


def test_a_failing_encoder_stops_the_unet(triton: Any, frontend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The partial image's encoding fails mid-stream (the frontend runs in this process): the stream
    ends with an error event, and the request stops in Triton too."""
    import dgate.frontend.image_service as image_service

    async def broken_encoder(*args: Any, **kwargs: Any) -> list[str]:
        raise OSError("the encoder failed")

    monkeypatch.setattr(image_service, "encode_b64", broken_encoder)
    before = unet_rows(triton, ASYNC)
    body = LONG | {"model": ASYNC, "stream": True, "partial_images": 3}
    events = []
    with httpx.stream("POST", f"{frontend}/v1/images/generations", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events and events[-1]["type"] == "error", events
    assert events[-1]["error"]["code"] == "internal_error"
    assert_stopped(triton, ASYNC, before)
