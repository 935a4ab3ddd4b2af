"""The OpenAI Videos API end to end: the official `openai` client -> the frontend -> a real tritonserver.

The downloaded MP4 is compared with the diffusers pipeline's frames put through the same encoder:
H.264 in yuv420p halves the chroma resolution, which on the noise-like frames of random weights costs
~21/255 on average even losslessly, so comparing raw frames would measure the codec; the exact frames
are checked by tests/test_videos_triton_e2e.py. Jobs live in SQLite (WAL) by default and in a real PostgreSQL
server in one test; restart survival uses two frontends over the same job database.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from frontend_fixtures import make_client
from openai import OpenAI
from PIL import Image

from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.encoding import decode_mp4, encode_mp4, probe_mp4
from dgate.reference import diffusers_video

# Served vs diffusers, both through encode_mp4 and back: the frames differ by <= 1/255 before encoding.
# A wrong video (another seed) is ~40/255 away on average.
MAX_MEAN_ERROR = 2 / 255
FAST = {"num_inference_steps": 3, "seed": 21}
REFERENCE = (np.random.default_rng(2).random((48, 64, 3)) * 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def settings(triton: Any, state: Path, **overrides: Any) -> FrontendSettings:
    values: dict[str, Any] = {"triton_url": triton.ports.grpc_url, "jobs_db": f"sqlite://{state}/jobs.db",
                              "assets_dir": str(state / "assets"), "video_workers": 2, "poll_after_ms": 100,
                              "job_lease_s": 3.0, "video_idle_poll_s": 0.2, "video_maintenance_s": 0.5}
    return FrontendSettings(**(values | overrides))


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video-frontend")


@pytest.fixture(scope="module")
def frontend(triton: Any, state: Path) -> Iterator[str]:
    from frontend_fixtures import start_frontend

    base_url, stop = start_frontend(settings(triton, state))
    yield base_url
    stop()


@pytest.fixture(scope="module")
def pipes(tiny_models: dict[str, Path]) -> dict[str, Any]:
    from diffusers import DiffusionPipeline

    return {name: DiffusionPipeline.from_pretrained(str(tiny_models[name]))
            for name in ("tiny-animatediff", "tiny-svd")}


def poll(client: OpenAI, video_id: str, timeout_s: float = 120) -> Any:
    """`create_and_poll` has no timeout: a bounded poll for the tests that create first."""
    deadline = time.monotonic() + timeout_s
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed") or time.monotonic() > deadline:
            return video
        time.sleep(0.1)


def reference(pipe: Any, *, frames: int, fps: int, size: tuple[int, int], image: np.ndarray | None = None,
              **overrides: Any) -> np.ndarray:
    width, height = size
    values = {"prompt": "a paper boat on a river", "negative_prompt": "", "num_inference_steps": 3, "seed": 21,
              "guidance_scale": pipe_default_guidance(pipe), "height": height, "width": width, "num_frames": frames,
              "fps": fps, "motion_bucket_id": 127, "noise_aug_strength": 0.02, "decode_chunk_size": 0,
              "scheduler": "default"} | overrides
    return diffusers_video(pipe, values, image)[0]


def mean_error(mp4: bytes, expected: np.ndarray, fps: float) -> float:
    """Mean |difference| / 255 between a downloaded MP4 and the expected frames encoded the same way."""
    return float(np.abs(decode_mp4(mp4).astype(float) - decode_mp4(encode_mp4(expected, fps))).mean() / 255)


def pipe_default_guidance(pipe: Any) -> float:
    return 3.0 if type(pipe).__name__ == "StableVideoDiffusionPipeline" else 7.5


def test_text_to_video_create_and_poll_then_download(client: OpenAI, pipes: dict[str, Any]) -> None:
    video = client.videos.create_and_poll(prompt="a paper boat on a river", model="tiny-animatediff", seconds="1",
                                          size="64x48", extra_body=FAST | {"fps": 6})
    assert (video.status, video.progress, video.model, video.size, video.seconds) == (
        "completed", 100, "tiny-animatediff", "64x48", "1")
    assert video.completed_at and video.expires_at and video.expires_at > video.completed_at
    data = client.videos.download_content(video.id).read()
    info = probe_mp4(data)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (6, 6.0, 64, 48, "h264")
    assert info.duration_s == pytest.approx(1.0, abs=1 / 6)
    expected = reference(pipes["tiny-animatediff"], frames=6, fps=6, size=(64, 48))
    assert mean_error(data, expected, 6) < MAX_MEAN_ERROR
    other_seed = reference(pipes["tiny-animatediff"], frames=6, fps=6, size=(64, 48), seed=22)
    assert mean_error(data, other_seed, 6) > 10 * MAX_MEAN_ERROR
    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (64, 48))
    sheet = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.size[0] % 64 == 0 and sheet.size[1] % 48 == 0


def test_image_to_video_with_input_reference(client: OpenAI, pipes: dict[str, Any]) -> None:
    video = client.videos.create_and_poll(prompt="", model="tiny-svd", size="64x64",
                                          input_reference=("frame.png", png(REFERENCE), "image/png"),
                                          extra_body=FAST | {"num_frames": 5, "fps": 7})
    assert video.status == "completed", video.error
    data = client.videos.download_content(video.id).read()
    info = probe_mp4(data)
    assert (info.frames, info.fps, info.width, info.height) == (5, 7.0, 64, 64)
    expected = reference(pipes["tiny-svd"], frames=5, fps=7, size=(64, 64), image=REFERENCE)
    assert mean_error(data, expected, 7) < MAX_MEAN_ERROR


def test_interpolation_multiplies_the_frame_rate(client: OpenAI) -> None:
    video = client.videos.create_and_poll(prompt="a paper boat", model="tiny-animatediff", size="64x64",
                                          extra_body=FAST | {"num_frames": 4, "fps": 4, "interpolate": 2})
    info = probe_mp4(client.videos.download_content(video.id).read())
    assert (info.frames, info.fps) == ((4 - 1) * 2 + 1, 8.0)


def test_seed_000_video_generations_creates_the_same_job(frontend: str, client: OpenAI) -> None:
    response = client.post("/video/generations", cast_to=dict,  # the raw route: not in the typed client
                           body={"prompt": "a paper boat", "model": "tiny-animatediff", "num_frames": 4, "fps": 8,
                                 **FAST})
    assert response["object"] == "video" and response["status"] in ("queued", "in_progress", "completed")
    video = poll(client, response["id"])
    assert video.status == "completed"
    assert probe_mp4(client.videos.download_content(video.id).read()).frames == 4


def test_list_remix_and_delete(client: OpenAI) -> None:
    source = client.videos.create_and_poll(prompt="a paper boat", model="tiny-animatediff", size="64x64",
                                           extra_body=FAST | {"num_frames": 3})
    remix = client.videos.remix(source.id, prompt="a paper boat at night")
    assert remix.remixed_from_video_id == source.id and remix.id != source.id and remix.prompt.endswith("night")
    assert poll(client, remix.id).status == "completed"
    ids = [video.id for video in client.videos.list(limit=2)]  # the client's iterator follows after=last_id
    assert len(ids) == len(set(ids)) and {source.id, remix.id} <= set(ids)
    deleted = client.videos.delete(remix.id)
    assert (deleted.id, deleted.deleted) == (remix.id, True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(remix.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"model": "tiny-sd", "prompt": "x"}, "model"),  # an image model asked for video
     ({"model": "tiny-animatediff", "prompt": "x", "size": "65x64"}, "size"),
     ({"model": "tiny-animatediff", "prompt": "x", "seconds": "9"}, "seconds"),  # 72 frames > 32
     ({"model": "tiny-animatediff", "prompt": "x", "extra_body": {"num_frames": 1}}, "num_frames"),
     ({"model": "tiny-animatediff", "prompt": "x", "input_reference": ("a.png", png(REFERENCE), "image/png")},
      "input_reference"),  # a text-to-video model
     ({"model": "tiny-svd", "prompt": ""}, "input_reference"),  # image-to-video without an image
     ({"model": "tiny-svd", "prompt": "", "input_reference": ("a.png", b"not an image", "image/png")},
      "input_reference")],
)
def test_bad_video_requests_are_400(client: OpenAI, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(**fields)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_an_unknown_model_is_a_404_as_for_images(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.videos.create(model="tiny-nope", prompt="x")
    assert (caught.value.body["param"], caught.value.body["code"]) == ("model", "model_not_found")
    assert set(caught.value.body) == {"message", "type", "param", "code"}


def test_an_image_request_to_a_video_model_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="makes videos"):
        client.images.generate(prompt="x", model="tiny-animatediff", size="64x64")


def test_jobs_survive_a_frontend_restart(triton: Any, tmp_path: Path,
                                         frontend_launcher: Callable[..., str]) -> None:
    """Jobs queued by a frontend without workers (stopped before running them) are run by the next
    one over the same database and assets directory; their ids and fields are the same."""
    first = frontend_launcher(settings(triton, tmp_path, video_workers=0))
    with make_client(first) as client:
        queued = [client.videos.create(prompt=f"boat {i}", model="tiny-animatediff", size="64x64",
                                       extra_body=FAST | {"num_frames": 3}) for i in range(2)]
        image = client.videos.create(prompt="", model="tiny-svd", size="64x64",
                                     input_reference=("frame.png", png(REFERENCE), "image/png"),
                                     extra_body=FAST | {"num_frames": 3})
        assert {video.status for video in [*queued, image]} == {"queued"}
    second = frontend_launcher(settings(triton, tmp_path))
    with make_client(second) as client:
        for video in [*queued, image]:
            done = poll(client, video.id)
            assert (done.status, done.prompt, done.created_at) == ("completed", video.prompt, video.created_at)
            assert probe_mp4(client.videos.download_content(video.id).read()).frames == 3


def test_postgresql_job_store_end_to_end(triton: Any, tmp_path: Path, postgres_url: str,
                                         frontend_launcher: Callable[..., str]) -> None:
    """Two frontend replicas over one PostgreSQL job store and one assets directory: a job created on
    one is run by either and downloadable from both."""
    replicas = [frontend_launcher(settings(triton, tmp_path, jobs_db=postgres_url, video_workers=workers))
                for workers in (0, 1)]
    with make_client(replicas[0]) as first, make_client(replicas[1]) as second:
        created = first.videos.create(prompt="a paper boat", model="tiny-animatediff", size="64x64",
                                      extra_body=FAST | {"num_frames": 3})
        done = poll(first, created.id)
        assert done.status == "completed", done.error
        assert first.videos.download_content(created.id).read() == second.videos.download_content(created.id).read()
        assert created.id in [video.id for video in second.videos.list(limit=100)]


def unet_executions(triton: Any) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton.ports.grpc_url) as stats_client:
        stats = stats_client.get_inference_statistics("tiny-animatediff_unet", as_json=True)
    return int(stats["model_stats"][0].get("execution_count", 0))


def test_deleting_a_running_job_stops_it_in_triton(triton: Any, client: OpenAI) -> None:
    """DELETE cancels the engine's stream; Triton cancels the request and the denoiser stops within a
    step: the UNet runs far fewer than the 100 steps asked, and no more once the job is gone."""
    before = unet_executions(triton)
    video = client.videos.create(prompt="a long paper boat ride", model="tiny-animatediff", size="64x64",
                                 extra_body={"num_inference_steps": 100, "num_frames": 16, "seed": 1})
    deadline = time.monotonic() + 60
    while client.videos.retrieve(video.id).progress < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.videos.delete(video.id)
    time.sleep(2.0)  # the worker notices at its next progress report
    stopped = unet_executions(triton)
    time.sleep(1.5)
    assert unet_executions(triton) == stopped  # nothing runs on in Triton
    assert 3 <= stopped - before < 50, stopped - before
