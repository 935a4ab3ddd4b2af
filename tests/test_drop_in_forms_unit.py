"""Clients written for vLLM-Omni and SGLang, against the fake engines: plain `requests`/`httpx` with
`data=` (a urlencoded form), `files=` + `data=` (multipart) and `json=`, curl's JSON under a form label,
vLLM-Omni's video fields and its `POST /v1/videos/sync` (issue 19)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from frontend_fixtures import assert_error_body, fake_frontend, start_frontend
from openai import OpenAI
from test_streaming_unit import SteppingEngine, png
from test_videos_unit import REFERENCE, FakeVideoEngine, Launcher, video_settings, wait_for

from dgate.frontend.engine import EngineError
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.encoding import probe_mp4

FORM = "application/x-www-form-urlencoded"
IMAGE = png(np.full((48, 64, 3), 90, np.uint8))

served, engine, client = fake_frontend(FakeVideoEngine)  # the videos frontend (workers on)


@pytest.fixture(scope="module")
def frontend_settings(tmp_path_factory: pytest.TempPathFactory) -> FrontendSettings:
    return video_settings(tmp_path_factory.mktemp("drop-in"))


@pytest.fixture(scope="module")
def images() -> Iterator[tuple[str, SteppingEngine]]:
    """A second frontend, on the image engine of the edits tests."""
    fake = SteppingEngine()
    base_url, stop = start_frontend(FrontendSettings(video_workers=0), fake)  # type: ignore[arg-type]
    yield base_url, fake
    stop()


@pytest.fixture
def image_engine(images: tuple[str, SteppingEngine]) -> Iterator[SteppingEngine]:
    images[1].reset()
    yield images[1]
    images[1].reset()


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    yield launcher
    launcher.stop_all()


def refused(response: requests.Response | httpx.Response, param: str | None, code: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    return assert_error_body(response.content, param=param, code=code, type="invalid_request_error")


def is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"


# --- images: forms read as forms, JSON as JSON ---------------------------------------------------------------


def test_edit_as_requests_and_httpx_send_multipart(images: tuple[str, SteppingEngine],
                                                   image_engine: SteppingEngine) -> None:
    url = f"{images[0]}/v1/images/edits"
    fields = {"prompt": "in autumn", "model": "tiny-sd", "seed": "5", "n": "2", "strength": "0.5"}
    answer = requests.post(url, files={"image": ("in.png", IMAGE, "image/png")}, data=fields, timeout=30)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["seed"], len(answer.json()["data"])) == (5, 2)
    answer = httpx.post(url, files={"image": ("in.png", IMAGE, "image/png")}, data=fields, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [call.params.strength for call in image_engine.calls] == [0.5, 0.5]
    variation = requests.post(f"{images[0]}/v1/images/variations", files={"image": ("in.png", IMAGE)},
                              data={"model": "tiny-sd", "seed": "3"}, timeout=30)
    assert variation.status_code == 200 and variation.json()["seed"] == 3, variation.text


@pytest.mark.parametrize("send", ["requests-data", "httpx-data", "requests-json", "httpx-json"])
def test_an_edit_without_its_file_names_image_whatever_the_content_type(
        images: tuple[str, SteppingEngine], image_engine: SteppingEngine, send: str) -> None:
    fields = {"prompt": "in autumn", "model": "tiny-sd"}
    for route in ("edits", "variations"):
        url = f"{images[0]}/v1/images/{route}"
        body = fields if route == "edits" else {"model": "tiny-sd"}
        library, kind = send.split("-")
        post = requests.post if library == "requests" else httpx.post
        answer = post(url, data=body, timeout=30) if kind == "data" else post(url, json=body, timeout=30)
        error = refused(answer, "image", "missing_required_parameter")
        assert "multipart" not in error["message"]
    assert not image_engine.calls


def test_a_form_without_prompt_names_prompt(images: tuple[str, SteppingEngine], image_engine: SteppingEngine) -> None:
    refused(requests.post(f"{images[0]}/v1/images/edits", data={"model": "tiny-sd"}, timeout=30), "prompt",
            "missing_required_parameter")
    refused(requests.post(f"{images[0]}/v1/images/edits", files={"image": ("in.png", IMAGE)},
                          data={"model": "tiny-sd"}, timeout=30), "prompt", "missing_required_parameter")


@pytest.mark.parametrize(("field", "value"), [
    ("seed", ""), ("seed", "abc"), ("n", ""), ("n", "1.5"), ("strength", ""), ("strength", "half"),
    ("guidance_scale", ""), ("num_inference_steps", " "), ("partial_images", ""), ("lora_scale", ""),
    ("output_compression", "x"), ("stream", ""),
])
def test_an_empty_or_malformed_numeric_field_is_a_400_naming_it(
        images: tuple[str, SteppingEngine], image_engine: SteppingEngine, field: str, value: str) -> None:
    url = f"{images[0]}/v1/images/edits"
    fields = {"prompt": "in autumn", "model": "tiny-sd", field: value}
    refused(requests.post(url, files={"image": ("in.png", IMAGE)}, data=fields, timeout=30), field, "invalid_value")
    refused(requests.post(url, data=fields, timeout=30), field, "invalid_value")  # urlencoded: named before image
    assert not image_engine.calls


def test_a_file_field_sent_as_text_is_named(images: tuple[str, SteppingEngine], image_engine: SteppingEngine) -> None:
    url = f"{images[0]}/v1/images/edits"
    for body in ({"prompt": "p", "image": "https://e.com/a.png"}, {"prompt": "p", "mask": "m.png"}):
        refused(requests.post(url, data=body, timeout=30), next(k for k in body if k != "prompt"), "invalid_value")
        refused(httpx.post(url, json=body, timeout=30), next(k for k in body if k != "prompt"), "invalid_value")
    refused(requests.post(url, data="prompt=p&prompt=q", headers={"Content-Type": FORM}, timeout=30), "prompt",
            "invalid_value")  # given twice
    refused(requests.post(url, data=b"prompt=%ff", headers={"Content-Type": FORM}, timeout=30), None, "invalid_form")


def test_curl_json_under_the_form_label_still_reads_as_json(images: tuple[str, SteppingEngine],
                                                             image_engine: SteppingEngine) -> None:
    """`curl URL -d '{...}'`: JSON labelled urlencoded, on a JSON route and on a form route."""
    body = json.dumps({"model": "tiny-sd", "prompt": "a fox", "size": "64x64", "seed": 4})
    answer = requests.post(f"{images[0]}/v1/images/generations", data=body, headers={"Content-Type": FORM},
                           timeout=30)
    assert answer.status_code == 200 and answer.json()["seed"] == 4, answer.text
    # A real form on a JSON route is not JSON: said so, not parsed as something else.
    answer = requests.post(f"{images[0]}/v1/images/generations", data={"model": "tiny-sd", "prompt": "a fox"},
                           timeout=30)
    refused(answer, None, "invalid_json")
    answer = requests.post(f"{images[0]}/v1/images/edits", data=json.dumps({"prompt": "p"}),
                           headers={"Content-Type": FORM}, timeout=30)
    refused(answer, "image", "missing_required_parameter")


# --- videos: vLLM-Omni's form fields -----------------------------------------------------------------------


def test_video_from_a_urlencoded_form_with_vllm_omni_fields(served: tuple[str, FakeVideoEngine],
                                                            client: OpenAI, engine: FakeVideoEngine) -> None:
    fields = {"prompt": "a form boat", "model": "tiny-animatediff", "width": "72", "height": "40",
              "num_frames": "5", "fps": "6", "seed": "21", "num_inference_steps": "2", "guidance_scale": "4.0",
              "negative_prompt": ""}
    answer = requests.post(f"{served[0]}/v1/videos", data=fields, timeout=30)
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert (created["status"], created["size"], created["seconds"]) == ("queued", "72x40", "0.833333")
    assert wait_for(client, created["id"], "completed", "failed").status == "completed"
    _, params, _ = next(call for call in engine.calls if call[1].prompt == "a form boat")
    assert (params.width, params.height, params.num_frames, params.fps, params.seed, params.num_inference_steps,
            params.guidance_scale, params.negative_prompt) == (72, 40, 5, 6, 21, 2, 4.0, "")


def test_video_fields_agree_with_openai_ones_or_are_refused(served: tuple[str, FakeVideoEngine]) -> None:
    url = f"{served[0]}/v1/videos"
    base = {"prompt": "a fox", "model": "tiny-animatediff"}
    for extra, param in (({"size": "64x48", "width": "72"}, "width"), ({"size": "64x48", "height": "40"}, "height"),
                         ({"seconds": "1", "num_frames": "5"}, "num_frames"),  # 1 s at 8 fps is 8 frames
                         ({"seconds": "1", "fps": "6", "num_frames": "8"}, "num_frames")):
        refused(requests.post(url, data=base | extra, timeout=30), param, "invalid_value")
        refused(httpx.post(url, json=base | extra, timeout=30), param, "invalid_value")
    for extra, size, seconds in (({"size": "64x48", "width": "64", "height": "48"}, "64x48", "1"),
                                 ({"size": "64x48", "width": "64"}, "64x48", "1"),
                                 ({"seconds": "1", "num_frames": "8"}, "64x48", "1"),
                                 ({"width": "72"}, "72x48", "1")):  # width completes the default size
        answer = requests.post(url, data=base | extra, timeout=30)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["size"], answer.json()["seconds"]) == (size, seconds)


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"model": "tiny-animatediff"}, "prompt", "invalid_value"),  # text-to-video needs a prompt
    ({"model": "tiny-animatediff", "prompt": ""}, "prompt", "invalid_value"),
    ({"model": "tiny-svd", "prompt": ""}, "input_reference", "invalid_value"),  # image-to-video needs one
    ({"model": "tiny-svd", "input_reference": "https://e.com/a.png"}, "input_reference", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "num_frames": ""}, "num_frames", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "fps": "fast"}, "fps", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "seed": ""}, "seed", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "width": ""}, "width", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "seconds": ""}, "seconds", "invalid_value"),
    ({"model": "tiny-animatediff", "prompt": "p", "guidance_scale_2": "4"}, "guidance_scale_2", "unknown_parameter"),
])
def test_refused_video_forms_name_the_field(served: tuple[str, FakeVideoEngine], client: OpenAI,
                                            fields: dict[str, str], param: str, code: str) -> None:
    before = [video.id for video in client.videos.list(limit=100)]
    for route in ("/v1/videos", "/v1/videos/sync"):
        refused(requests.post(f"{served[0]}{route}", data=fields, timeout=30), param, code)
        # The same fields as multipart text parts (`files=` with no file name: `curl -F`).
        multipart = {name: (None, value) for name, value in fields.items()}
        refused(requests.post(f"{served[0]}{route}", files=multipart, timeout=30), param, code)
    assert [video.id for video in client.videos.list(limit=100)] == before


def test_image_to_video_as_requests_sends_it(served: tuple[str, FakeVideoEngine], client: OpenAI,
                                             engine: FakeVideoEngine) -> None:
    answer = requests.post(f"{served[0]}/v1/videos", files={"input_reference": ("ref.png", png(REFERENCE))},
                           data={"model": "tiny-svd", "num_frames": "4", "fps": "7", "seed": "31"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert wait_for(client, answer.json()["id"], "completed", "failed").status == "completed"
    _, params, image = next(call for call in engine.calls if call[1].seed == 31)
    assert image is not None and np.array_equal(image, REFERENCE) and (params.num_frames, params.fps) == (4, 7)


def test_curl_json_under_the_form_label_creates_a_video(served: tuple[str, FakeVideoEngine]) -> None:
    body = json.dumps({"prompt": "curl waves", "model": "tiny-animatediff", "num_frames": 4})
    answer = requests.post(f"{served[0]}/v1/videos", data=body, headers={"Content-Type": FORM}, timeout=30)
    assert answer.status_code == 200 and answer.json()["seconds"] == "0.5", answer.text


# --- POST /v1/videos/sync --------------------------------------------------------------------------------------


@pytest.mark.parametrize("send", ["form", "multipart", "json"])
def test_sync_answers_the_mp4(served: tuple[str, FakeVideoEngine], send: str) -> None:
    url = f"{served[0]}/v1/videos/sync"
    fields = {"prompt": f"sync {send}", "model": "tiny-animatediff", "num_frames": "6", "fps": "6", "width": "48"}
    if send == "form":
        answer = requests.post(url, data=fields, timeout=30)
    elif send == "multipart":
        answer = requests.post(url, data={**fields, "model": "tiny-svd", "prompt": ""}, timeout=30,
                               files={"input_reference": ("ref.png", png(REFERENCE), "image/png")})
    else:
        answer = httpx.post(url, json={**fields, "num_frames": 6, "fps": 6, "width": 48}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4" and is_mp4(answer.content)
    info = probe_mp4(answer.content)
    assert (info.frames, info.fps, info.width, info.height) == (6, 6.0, 48, 48)


def test_sync_of_a_failing_job_answers_its_error(served: tuple[str, FakeVideoEngine], engine: FakeVideoEngine) -> None:
    engine.failure = EngineError("the UNet ran out of memory")
    answer = requests.post(f"{served[0]}/v1/videos/sync", data={"prompt": "doomed", "model": "tiny-animatediff"},
                           timeout=30)
    assert answer.status_code == 500, answer.text
    assert_error_body(answer.content, type="server_error", code="generation_failed",
                      message="the UNet ran out of memory")


def test_sync_past_the_deadline_is_a_504_and_the_job_goes_on(tmp_path: Path, launch: Launcher) -> None:
    fake = FakeVideoEngine()
    fake.gate.clear()  # every run waits after its first step
    base_url, client = launch(video_settings(tmp_path, video_workers=1, request_timeout_s=0.5), fake)
    started = time.monotonic()
    answer = requests.post(f"{base_url}/v1/videos/sync", data={"prompt": "slow", "model": "tiny-animatediff"},
                           timeout=30)
    assert 0.5 <= time.monotonic() - started < 10
    assert answer.status_code == 504, answer.text
    error = assert_error_body(answer.content, type="server_error", code="timeout")
    (video,) = client.videos.list()
    assert video.id in error["message"] and video.status in ("queued", "in_progress")
    fake.gate.set()
    assert wait_for(client, video.id, "completed").status == "completed"
    assert is_mp4(client.videos.download_content(video.id).content)


def test_sync_client_gone_deletes_its_job(tmp_path: Path, launch: Launcher) -> None:
    fake = FakeVideoEngine()
    fake.gate.clear()
    base_url, client = launch(video_settings(tmp_path, video_workers=1), fake)
    done = threading.Event()

    def give_up() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/videos/sync", data={"prompt": "abandoned", "model": "tiny-animatediff"},
                       timeout=httpx.Timeout(10, read=1.0))
        done.set()

    thread = threading.Thread(target=give_up)
    thread.start()
    thread.join(20)
    assert done.is_set()
    deadline = time.monotonic() + 10
    while list(client.videos.list()) or "abandoned" not in fake.cancelled:
        assert time.monotonic() < deadline, "the abandoned job was not deleted and stopped"
        time.sleep(0.05)
    fake.gate.set()


def test_openapi_documents_sync_and_forms(served: tuple[str, FakeVideoEngine]) -> None:
    spec = requests.get(f"{served[0]}/openapi.json", timeout=30).json()
    sync = spec["paths"]["/v1/videos/sync"]["post"]
    assert "video/mp4" in sync["responses"]["200"]["content"]
    assert {"multipart/form-data", FORM, "application/json"} <= set(sync["requestBody"]["content"])


def test_a_form_past_what_is_sniffed_for_json_reaches_the_route_whole(images: tuple[str, SteppingEngine],
                                                                       image_engine: SteppingEngine) -> None:
    """The middleware reads at most MAX_RELABELLED_BYTES to decide; the rest is streamed on after it."""
    prompt = "a" * (5 << 20)
    answer = requests.post(f"{images[0]}/v1/images/edits", data={"prompt": prompt, "model": "tiny-sd"}, timeout=60)
    refused(answer, "image", "missing_required_parameter")  # parsed whole: every field read
    answer = requests.post(f"{images[0]}/v1/images/edits", data={"prompt": prompt, "seed": ""}, timeout=60)
    refused(answer, "seed", "invalid_value")  # the field after the 5 MB one
