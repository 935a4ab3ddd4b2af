"""Request bounds against a fake engine: the body byte cap (413 while it is read, whatever the
Content-Length says), the length caps of the request fields (a 400 naming each), the edit images cap,
the WebSocket's first-message timeout and size cap, and `url` images stored off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import httpx
import numpy as np
import pytest
from frontend_fixtures import assert_error_body, fake_frontend
from test_streaming_unit import SteppingEngine, png
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dgate.frontend.app import create_app
from dgate.frontend.assets import AssetStore
from dgate.frontend.image_store import ImageStore
from dgate.frontend.schemas import MAX_LORAS, MAX_NAME_CHARS, MAX_PATH_CHARS
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.uploads import FIELDS_BYTES

MAX_BODY_MB, MAX_UPLOAD_MB, MAX_PROMPT_CHARS, MAX_EDIT_IMAGES = 0.05, 0.25, 100, 4
BODY_LIMIT = int(MAX_BODY_MB * 2**20)
FORM_LIMIT = BODY_LIMIT + int(MAX_UPLOAD_MB * 2**20) + FIELDS_BYTES
SETTINGS = FrontendSettings(video_workers=0, max_body_mb=MAX_BODY_MB, max_upload_mb=MAX_UPLOAD_MB,
                            max_prompt_chars=MAX_PROMPT_CHARS, max_edit_images=MAX_EDIT_IMAGES,
                            ws_first_message_timeout_s=0.5)

served, engine = fake_frontend(SteppingEngine)[:2]


@pytest.fixture(scope="module")
def frontend_settings() -> FrontendSettings:
    return SETTINGS


@pytest.fixture
def base_url(served: tuple[str, SteppingEngine]) -> str:
    return served[0]


def generation(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x32", "num_inference_steps": 2} | fields


def refused(response: httpx.Response, status: int, **expected: Any) -> None:
    assert response.status_code == status, response.text
    assert_error_body(response.content, **expected)


# --- the body byte cap --------------------------------------------------------------------------------


def test_a_json_body_past_the_cap_is_413_before_it_is_read(base_url: str, engine: SteppingEngine) -> None:
    body = json.dumps(generation(prompt="a" * BODY_LIMIT)).encode()
    with httpx.Client(base_url=base_url, timeout=10) as http:
        refused(http.post("/v1/images/generations", content=body, headers={"Content-Type": "application/json"}),
                413, code="request_too_large", param=None, type="invalid_request_error")
        # Just under the cap, the body is read and judged on its fields (the prompt's own cap).
        small = json.dumps(generation(prompt="a" * (BODY_LIMIT - 200))).encode()
        refused(http.post("/v1/images/generations", content=small, headers={"Content-Type": "application/json"}),
                400, param="prompt")
    assert engine.calls == []


def chunked_post(base_url: str, path: str, content_type: str, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """POST without a Content-Length (chunked): only counting can stop it."""
    parts = urllib.parse.urlsplit(base_url)
    connection = HTTPConnection(parts.netloc, timeout=10)
    try:
        try:
            connection.request("POST", path, chunks, {"Content-Type": content_type, "Transfer-Encoding": "chunked"},
                               encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_chunked_json_body_past_the_cap_is_413(base_url: str, engine: SteppingEngine) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny-sd", "prompt": "'
        for _ in range(64):  # 4 MB, far past the 0.05 MB allowed
            yield b"a" * (64 * 1024)
        yield b'"}'

    status, body = chunked_post(base_url, "/v1/images/generations", "application/json", chunks())
    assert status == 413
    assert_error_body(body, code="request_too_large")
    assert engine.calls == []


def multipart(boundary: str, size: int) -> tuple[bytes, bytes]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na fox\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + bytes(size), f"\r\n--{boundary}--\r\n".encode()


def test_a_multipart_body_past_the_cap_is_413(base_url: str, engine: SteppingEngine) -> None:
    boundary = "bounds-boundary"
    content_type = f"multipart/form-data; boundary={boundary}"
    head, tail = multipart(boundary, FORM_LIMIT)
    with httpx.Client(base_url=base_url, timeout=10) as http:  # declared: refused before a byte is read
        refused(http.post("/v1/images/edits", content=head + tail, headers={"Content-Type": content_type}),
                413, code="request_too_large")

    def chunks() -> Iterator[bytes]:
        yield head[:200]
        for _ in range(64):
            yield bytes(64 * 1024)
        yield tail

    # Streamed to a route that reads no form: counted and stopped at the form cap.
    status, body = chunked_post(base_url, "/v1/images/generations", content_type, chunks())
    assert status == 413
    assert_error_body(body, code="request_too_large")
    # (Streamed to an upload route, the route's own 400 naming the file comes first by DGATE_MAX_BODY_MB:
    # test_videos_unit's chunked upload, at the default 1 MB.)
    assert engine.calls == []


def test_a_lying_content_length_does_not_let_a_body_through() -> None:
    """The declared length says 10 bytes; the messages keep coming: the count stops them at the cap."""
    app = create_app(SETTINGS, SteppingEngine())  # type: ignore[arg-type]  # a fake: part of Engine
    chunk = b"a" * (16 * 1024)
    pulled: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(pulled) < 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/images/generations", "raw_path": b"/v1/images/generations",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert_error_body(b"".join(message.get("body", b"") for message in sent[1:]), code="request_too_large")
    assert sum(pulled) <= BODY_LIMIT + len(chunk)  # nothing read past the message that crossed the cap


# --- field length caps --------------------------------------------------------------------------------


LONG_NAME = "x" * (MAX_NAME_CHARS + 1)


@pytest.mark.parametrize(("fields", "param"), [
    ({"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"negative_prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
    ({"user": LONG_NAME}, "user"),
    ({"safety_identifier": LONG_NAME}, "safety_identifier"),
    ({"model": LONG_NAME}, "model"),
    ({"scheduler": LONG_NAME}, "scheduler"),
    ({"lora": LONG_NAME}, "lora"),
    ({"lora": ["a", LONG_NAME]}, "lora.1"),
    ({"lora": [f"a{i}" for i in range(MAX_LORAS + 1)]}, "lora"),
    ({"lora": {"name": LONG_NAME, "path": "a.safetensors"}}, "lora.name"),
    ({"lora": [{"name": "a", "path": "p" * (MAX_PATH_CHARS + 1)}]}, "lora.0.path"),
    ({"lora_scale": [1.0] * (MAX_LORAS + 1)}, "lora_scale"),
])
def test_each_capped_generation_field_one_past_its_cap_is_400_naming_it(
        base_url: str, engine: SteppingEngine, fields: dict[str, Any], param: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        refused(http.post("/v1/images/generations", json=generation(**fields)), 400, param=param)
    assert engine.calls == []


def test_fields_at_their_caps_are_accepted(base_url: str, engine: SteppingEngine) -> None:
    fields = {"prompt": "a" * MAX_PROMPT_CHARS, "negative_prompt": "b" * MAX_PROMPT_CHARS,
              "user": "u" * MAX_NAME_CHARS, "safety_identifier": "s" * MAX_NAME_CHARS}
    with httpx.Client(base_url=base_url, timeout=10) as http:
        response = http.post("/v1/images/generations", json=generation(**fields))
    assert response.status_code == 200, response.text
    assert engine.calls[0].params.negative_prompt == "b" * MAX_PROMPT_CHARS


IMAGE = ("in.png", png(np.zeros((32, 64, 3), np.uint8)), "image/png")


@pytest.mark.parametrize(("path", "fields", "param"), [
    ("/v1/images/edits", {"prompt": "a fox", "user": LONG_NAME}, "user"),
    ("/v1/images/edits", {"prompt": "a fox", "negative_prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
    ("/v1/images/edits", {"prompt": "a fox", "lora[]": [f"a{i}" for i in range(MAX_LORAS + 1)]}, "lora"),
    ("/v1/images/variations", {"negative_prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
    ("/v1/images/variations", {"user": LONG_NAME}, "user"),
])
def test_capped_edit_and_variation_form_fields_are_400_naming_them(
        base_url: str, engine: SteppingEngine, path: str, fields: dict[str, Any], param: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        refused(http.post(path, data={"model": "tiny-sd", "size": "64x32"} | fields, files={"image": IMAGE}), 400,
                param=param)
    assert engine.calls == []


@pytest.mark.parametrize(("fields", "param"), [
    ({"negative_prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
    ({"model": LONG_NAME}, "model"),
    ({"scheduler": LONG_NAME}, "scheduler"),
    ({"seconds": "1" * 33}, "seconds"),
])
def test_capped_video_fields_are_400_naming_them(base_url: str, fields: dict[str, Any], param: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        refused(http.post("/v1/videos", json={"model": "tiny-video", "prompt": "a river"} | fields), 400,
                param=param)


# --- images per edit request --------------------------------------------------------------------------


def test_edit_images_times_n_is_capped_naming_n(base_url: str, engine: SteppingEngine) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        refused(http.post("/v1/images/edits", data={"model": "tiny-sd", "prompt": "a fox", "size": "64x32", "n": "2"},
                          files=[("image[]", IMAGE)] * 3), 400, param="n", code="invalid_value")  # 6 > 4
        assert engine.calls == []
        response = http.post("/v1/images/edits", data={"model": "tiny-sd", "prompt": "a fox", "size": "64x32",
                                                        "n": "2"}, files=[("image[]", IMAGE)] * 2)  # 4: at the cap
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == MAX_EDIT_IMAGES


# --- the WebSocket ------------------------------------------------------------------------------------


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/v1/ws/generate"


def ws_error(base_url: str, message: str | None) -> tuple[dict[str, Any], int | None]:
    with connect(ws_url(base_url), open_timeout=10, close_timeout=5) as websocket:
        if message is not None:
            websocket.send(message)
        error = json.loads(websocket.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=10)
        return error, websocket.close_code


def test_a_silent_websocket_is_closed_after_the_first_message_timeout(base_url: str) -> None:
    started = time.monotonic()
    error, code = ws_error(base_url, None)
    assert 0.4 <= time.monotonic() - started < 5
    assert error["type"] == "error" and error["error"]["code"] == "timeout"
    assert code == 1008


def test_a_websocket_request_past_the_body_cap_is_refused(base_url: str, engine: SteppingEngine) -> None:
    error, code = ws_error(base_url, json.dumps(generation(prompt="a" * BODY_LIMIT)))
    assert error["error"]["code"] == "request_too_large" and code == 1008
    error, code = ws_error(base_url, json.dumps(generation(negative_prompt="a" * (MAX_PROMPT_CHARS + 1))))
    assert error["error"]["param"] == "negative_prompt" and code == 1008
    assert engine.calls == []


# --- url images are stored off the event loop ---------------------------------------------------------


class SlowAssets(AssetStore):
    def write(self, name: str, data: bytes) -> Any:
        time.sleep(0.5)  # a slow network volume
        return super().write(name, data)


def test_image_store_aput_leaves_the_loop_free(tmp_path: Any) -> None:
    store = ImageStore(SlowAssets(tmp_path), ttl_s=60, max_bytes=1 << 20)

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        image_id = await store.aput(b"png bytes", "png")
        task.cancel()
        return image_id, ticks

    image_id, ticks = asyncio.run(main())
    assert ticks >= 10  # the loop ran on while the write slept
    stored = store.get(image_id)
    assert stored is not None and stored.data == b"png bytes"


def test_a_slow_url_store_does_not_stall_other_requests(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    put = ImageStore.put

    def slow_put(self: ImageStore, data: bytes, fmt: str) -> str:
        time.sleep(1.0)
        return put(self, data, fmt)

    monkeypatch.setattr(ImageStore, "put", slow_put)
    answers: dict[str, Any] = {}

    def generate() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            answers["url"] = http.post("/v1/images/generations", json=generation(response_format="url"))

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(0.3)  # the generation is (very likely) in its put by now
    with httpx.Client(base_url=base_url, timeout=30) as http:
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        health_s = time.monotonic() - started
    thread.join(timeout=30)
    assert answers["url"].status_code == 200, answers["url"].text
    assert health_s < 0.5  # not queued behind the 1 s write
