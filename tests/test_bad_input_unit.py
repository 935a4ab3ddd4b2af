"""A corpus of bad input (issue 18, (a)): malformed JSON, wrong types, huge and negative numbers, unicode
and control characters, missing fields, wrong content types, oversized and truncated bodies,
decompression bombs on every route that takes an image. Each one is a 4xx in OpenAI's shape, and the
frontend (with API keys on) keeps serving: a valid request after the corpus still works."""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any

import httpx
import pytest
from frontend_fixtures import ERROR_KEYS, fake_frontend
from PIL import Image
from test_auth_unit import PLAIN_KEY, AuthEngine
from test_auth_unit import frontend_settings as frontend_settings  # noqa: F401 - the keyed settings

served, engine = fake_frontend(AuthEngine)[:2]

AUTH = {"Authorization": f"Bearer {PLAIN_KEY}"}  # a key without quotas: the corpus is many requests
GOOD = {"model": "tiny-sd", "prompt": "a fox", "size": "64x64", "num_inference_steps": 2}


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(side: int = 50_000) -> bytes:
    """A valid PNG of side x side pixels (2.5 gigapixels) in a few kilobytes: its zeros compress."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * side  # filter byte + one grey byte a pixel
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()  # the first rows only
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def truncated_multipart() -> tuple[bytes, str]:
    boundary = "dgateboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na fox\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_bytes()[:40]  # cut inside the file, no end
    return body, f"multipart/form-data; boundary={boundary}"


def json_case(body: Any, path: str = "/v1/images/generations") -> dict[str, Any]:
    return {"method": "POST", "path": path, "content": json.dumps(body).encode(),
            "headers": {"Content-Type": "application/json"}}


def raw_case(content: bytes, content_type: str, path: str = "/v1/images/generations") -> dict[str, Any]:
    return {"method": "POST", "path": path, "content": content, "headers": {"Content-Type": content_type}}


def form_case(path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> dict[str, Any]:
    return {"method": "POST", "path": path, "data": fields, "files": files}


BOMB, SMALL_PNG = png_bomb(), png_bytes()
TRUNCATED, TRUNCATED_TYPE = truncated_multipart()
CORPUS: dict[str, dict[str, Any]] = {
    "malformed JSON": raw_case(b'{"model": "tiny-sd", "prompt": ', "application/json"),
    "JSON that is not an object": json_case(["a fox"]),
    "JSON null": raw_case(b"null", "application/json"),
    "empty body": raw_case(b"", "application/json"),
    "invalid UTF-8": raw_case(b'{"prompt": "\xff\xfe"}', "application/json"),
    "missing prompt": json_case({"model": "tiny-sd"}),
    "prompt of the wrong type": json_case(GOOD | {"prompt": 42}),
    "n of the wrong type": json_case(GOOD | {"n": "two"}),
    "n huge": json_case(GOOD | {"n": 10**12}),
    "n negative": json_case(GOOD | {"n": -1}),
    "steps huge": json_case(GOOD | {"num_inference_steps": 10**9}),
    "steps as a float": json_case(GOOD | {"num_inference_steps": 2.5}),
    "seed past int64": json_case(GOOD | {"seed": 2**80}),
    "guidance NaN": raw_case(json.dumps(GOOD).replace("}", ', "guidance_scale": NaN}').encode(), "application/json"),
    "guidance infinite": raw_case(json.dumps(GOOD).replace("}", ', "guidance_scale": 1e999}').encode(),
                                  "application/json"),
    "size negative": json_case(GOOD | {"size": "-64x64"}),
    "size zero": json_case(GOOD | {"size": "0x0"}),
    "size huge": json_case(GOOD | {"size": "100000x100000"}),
    "size garbage": json_case(GOOD | {"size": "64x64; DROP TABLE"}),
    "size with unicode digits": json_case(GOOD | {"size": "６４x６４"}),
    "model with control characters": json_case(GOOD | {"model": "tiny-sd\x00\x1b[31m"}),
    "model unknown unicode": json_case(GOOD | {"model": "🦊" * 10}),
    "prompt too long": json_case(GOOD | {"prompt": "fox " * 5000}),
    "negative prompt too long": json_case(GOOD | {"negative_prompt": "x" * 20000}),
    "unknown field": json_case(GOOD | {"promtp": "typo"}),
    "lora list too long": json_case(GOOD | {"lora": [f"a{i}" for i in range(100)]}),
    "lora path escaping the root": json_case(GOOD | {"lora": [{"name": "x", "path": "../../etc/passwd"}]}),
    "response_format unknown": json_case(GOOD | {"response_format": "gif"}),
    "stream of the wrong type": json_case(GOOD | {"stream": "yes please"}),
    "text/plain body": raw_case(json.dumps(GOOD).encode(), "text/plain"),
    "XML body": raw_case(b"<prompt>a fox</prompt>", "application/xml"),
    "oversized JSON": raw_case(json.dumps(GOOD | {"prompt": "x" * (3 << 20)}).encode(), "application/json"),
    "deeply nested JSON": raw_case(b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
    "edit without an image": form_case("/v1/images/edits", {"prompt": "x", "model": "tiny-sd"}, {}),
    "edit with a non-image": form_case("/v1/images/edits", {"prompt": "x", "model": "tiny-sd"},
                                       {"image": ("a.png", b"not an image at all", "image/png")}),
    "edit with a decompression bomb": form_case("/v1/images/edits", {"prompt": "x", "model": "tiny-sd"},
                                                {"image": ("bomb.png", BOMB, "image/png")}),
    "edit with a bomb as its mask": form_case("/v1/images/edits", {"prompt": "x", "model": "tiny-sd"},
                                              {"image": ("a.png", SMALL_PNG, "image/png"),
                                               "mask": ("m.png", BOMB, "image/png")}),
    "variation with a decompression bomb": form_case("/v1/images/variations", {"model": "tiny-sd"},
                                                     {"image": ("bomb.png", BOMB, "image/png")}),
    "video with a decompression bomb": form_case("/v1/videos", {"prompt": "x", "model": "tiny-animatediff"},
                                                 {"input_reference": ("bomb.png", BOMB, "image/png")}),
    "truncated multipart": raw_case(TRUNCATED, TRUNCATED_TYPE, "/v1/images/edits"),
    "multipart without a boundary": raw_case(b"--x\r\n", "multipart/form-data", "/v1/images/edits"),
    "edit as JSON": json_case(GOOD, "/v1/images/edits"),
    "video with negative seconds": json_case({"model": "tiny-animatediff", "prompt": "x", "seconds": "-4"},
                                             "/v1/videos"),
    "video of unknown model": json_case({"model": "nope", "prompt": "x"}, "/v1/videos"),
    "video id with traversal": {"method": "GET", "path": "/v1/videos/..%2F..%2Fetc%2Fpasswd"},
    "video content of a bad variant": {"method": "GET", "path": "/v1/videos/video_00/content?variant=../x"},
    "method not allowed": {"method": "PUT", "path": "/v1/images/generations"},
    "unknown route": {"method": "POST", "path": "/v1/images/generate"},
}


@pytest.fixture
def http(served: tuple[str, AuthEngine]) -> httpx.Client:
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as client:
        yield client


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_is_a_4xx_in_openai_shape(http: httpx.Client, engine: AuthEngine, name: str) -> None:
    case = dict(CORPUS[name])
    response = http.request(case.pop("method"), case.pop("path"), **case)
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"], error
    assert "Traceback" not in error["message"] and "/site-packages/" not in error["message"], error


def test_the_server_keeps_serving_after_the_corpus(http: httpx.Client, engine: AuthEngine) -> None:
    for case in CORPUS.values():
        case = dict(case)
        http.request(case.pop("method"), case.pop("path"), **case)
    response = http.post("/v1/images/generations", json=GOOD)
    assert response.status_code == 200 and len(response.json()["data"]) == 1
    assert http.get("/health").status_code == 200
