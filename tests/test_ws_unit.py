"""`/v1/ws/generate` against a fake engine, with the `websockets` sync client: progress per step, previews,
the result, errors with their close codes, and cancellation when the client goes away."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from frontend_fixtures import ERROR_KEYS, fake_frontend
from test_frontend_unit import fake_images
from test_streaming_unit import SteppingEngine, decode
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from dgate.frontend.engine import EngineError

served, engine = fake_frontend(SteppingEngine)[:2]  # no openai client: a WebSocket API


@pytest.fixture
def url(served: tuple[str, SteppingEngine]) -> str:
    return served[0].replace("http://", "ws://") + "/v1/ws/generate"


def exchange(url: str, request: Any) -> tuple[list[dict[str, Any]], int | None]:
    """Every message the server sends for `request`, and its close code."""
    with connect(url, open_timeout=10, close_timeout=5) as websocket:
        websocket.send(request if isinstance(request, str) else json.dumps(request))
        messages = read_all(websocket)
        return messages, websocket.close_code


def read_all(websocket: ClientConnection) -> list[dict[str, Any]]:
    messages = []
    try:
        while True:
            messages.append(json.loads(websocket.recv(timeout=10)))
    except ConnectionClosed:
        return messages


def test_progress_rises_to_one_then_the_result(url: str, engine: SteppingEngine) -> None:
    messages, code = exchange(url, {"model": "tiny-sd", "prompt": "a lighthouse", "n": 2, "size": "64x32",
                                    "num_inference_steps": 6, "seed": 3, "output_format": "jpeg"})
    assert code == 1000
    progress = [m for m in messages if m["type"] == "progress"]
    assert [m["step"] for m in progress] == [1, 2, 3, 4, 5, 6] and {m["total"] for m in progress} == {6}
    assert [m["progress"] for m in progress] == pytest.approx([k / 6 for k in range(1, 7)])
    assert progress[-1]["progress"] == 1.0
    assert [m["type"] for m in messages] == ["progress"] * 6 + ["result"]
    data = messages[-1]["data"]
    assert {key: data[key] for key in ("seed", "size", "model", "output_format")} == {
        "seed": 3, "size": "64x32", "model": "tiny-sd", "output_format": "jpeg"}
    assert len(data["images"]) == 2
    final = fake_images(engine.calls[0].params)
    for index, image in enumerate(data["images"]):
        decoded = decode(image["b64_json"])
        assert decoded.format == "JPEG" and decoded.size == (64, 32)
        assert np.abs(np.asarray(decoded, np.int16) - final[index]).max() <= 8
    (call,) = engine.calls
    assert call.on_step and not call.on_partial


def test_partial_images_arrive_between_progress_messages(url: str, engine: SteppingEngine) -> None:
    messages, code = exchange(url, {"model": "tiny-sd", "prompt": "a fox", "n": 2, "partial_images": 2,
                                    "num_inference_steps": 6, "stream": True})
    assert code == 1000
    partials = [(m["index"], m["image_index"]) for m in messages if m["type"] == "partial_image"]
    assert partials == [(0, 0), (0, 1), (1, 0), (1, 1)]
    kinds = [m["type"] for m in messages]
    assert kinds.index("partial_image") > kinds.index("progress") and kinds[-1] == "result"
    assert engine.calls[0].partial_images == 2


@pytest.mark.parametrize(("request_", "param", "code"), [
    ({"model": "tiny-sd", "prompt": "a fox", "n": 9}, "n", "invalid_value"),
    ({"model": "tiny-sd", "prompt": "a fox", "colour": "red"}, "colour", "unknown_parameter"),
    ({"model": "tiny-sd"}, "prompt", "missing_required_parameter"),
    ({"model": "tiny-blocking", "prompt": "a fox"}, "model", "invalid_value"),  # cannot stream progress
    ({"model": "tiny-video", "prompt": "a fox"}, "model", "invalid_value"),
    ({"model": "tiny-sd", "prompt": "a fox", "response_format": "url"}, "response_format", "invalid_value"),
    ("{not json", None, "invalid_json"),
    ("[1, 2]", None, "invalid_json"),
])
def test_client_errors_are_an_error_message_then_close_1008(url: str, engine: SteppingEngine, request_: Any,
                                                             param: str | None, code: str) -> None:
    messages, close_code = exchange(url, request_)
    assert close_code == 1008
    (message,) = messages
    assert message["type"] == "error" and set(message["error"]) == ERROR_KEYS
    assert (message["error"]["param"], message["error"]["code"], message["error"]["type"]) == (
        param, code, "invalid_request_error")
    assert not engine.calls


def test_unknown_model_is_an_error_message(url: str, engine: SteppingEngine) -> None:
    messages, close_code = exchange(url, {"model": "dall-e-3", "prompt": "a fox"})
    assert close_code == 1008 and messages[0]["error"]["code"] == "model_not_found"


def test_engine_failure_is_an_error_message_then_close_1011(url: str, engine: SteppingEngine) -> None:
    engine.failure = EngineError("the UNet failed")
    messages, close_code = exchange(url, {"model": "tiny-sd", "prompt": "a fox", "num_inference_steps": 4})
    assert close_code == 1011
    assert [m["type"] for m in messages] == ["progress", "error"]
    assert messages[-1]["error"] == {"message": "the UNet failed", "type": "server_error", "param": None,
                                     "code": "engine_error"}


def test_a_client_that_disconnects_cancels_the_generation(url: str, engine: SteppingEngine) -> None:
    engine.block = True
    with connect(url, open_timeout=10) as websocket:
        websocket.send(json.dumps({"model": "tiny-sd", "prompt": "a fox"}))
        assert json.loads(websocket.recv(timeout=10))["type"] == "progress"
    assert engine.cancelled.wait(5), "the engine call was not cancelled"
