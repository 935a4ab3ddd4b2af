"""The Videos API against a fake engine, called with the official openai client: durable jobs in a
SQLite store and files in an assets directory under tmp_path, the worker pool, restarts, leases, and
every refusal in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from frontend_fixtures import ERROR_KEYS, FakePipelines, assert_error_body, fake_frontend, make_client, start_frontend
from openai import OpenAI
from PIL import Image

from dgate.core.capabilities import Capabilities
from dgate.core.errors import InvalidRequestError
from dgate.core.limits import GenerationLimits
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.engine import EngineError, ProgressCallback
from dgate.frontend.jobs import open_job_store
from dgate.frontend.schemas import GenerationParams
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.encoding import probe_mp4

T2V_LIMITS = GenerationLimits(
    family="animatediff", default_width=64, default_height=48, min_size=32, max_width=128, max_height=128,
    size_multiple=8, default_steps=4, max_steps=20, max_images=1, default_guidance_scale=7.5,
    max_guidance_scale=20.0, default_scheduler="default", schedulers=("euler", "default"),
    default_max_sequence_length=0, max_sequence_length=0, true_cfg=False,
    default_num_frames=8, max_num_frames=16, default_fps=8,
)
I2V_LIMITS = replace(T2V_LIMITS, family="svd", default_steps=3, default_guidance_scale=3.0, schedulers=("default",),
                     default_num_frames=6, max_num_frames=14, default_fps=7)
IMAGE_LIMITS = replace(T2V_LIMITS, family="sd", default_num_frames=0, max_num_frames=0, default_fps=0,
                       max_images=4)
REFERENCE = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG claiming `width` x `height`: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def fake_frames(params: GenerationParams, image: np.ndarray | None) -> np.ndarray:
    """Smooth, deterministic frames that move: a gradient sliding right by 3 px a frame."""
    h, w = params.height, params.width
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((params.num_frames, h, w, 3), np.uint8)
    tint = 0 if image is None else int(image.mean())
    for i in range(params.num_frames):
        frames[i, ..., 0] = ((x + 3 * i) * 255 // (w + 3 * params.num_frames)).astype(np.uint8)
        frames[i, ..., 1] = (y * 255 // max(h - 1, 1)).astype(np.uint8)
        frames[i, ..., 2] = (params.seed * 37 + tint) % 256
    return frames


@dataclass
class FakeVideoEngine(FakePipelines):
    """A catalog of a text-to-video, an image-to-video and an image pipeline, and videos. `gate` (closed =
    clear) holds every run before its second step; `failure` is raised after the steps."""

    pipelines: dict[str, ServedPipeline] = field(default_factory=lambda: {
        "tiny-animatediff": ServedPipeline(T2V_LIMITS, Capabilities(task="text-to-video")),
        "tiny-svd": ServedPipeline(I2V_LIMITS, Capabilities(task="image-to-video")),
        "tiny-sd": ServedPipeline(IMAGE_LIMITS, Capabilities(task="image"))})
    calls: list[tuple[str, GenerationParams, np.ndarray | None]] = field(default_factory=list)
    failure: Exception | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    cancelled: list[str] = field(default_factory=list)  # prompts of runs that were cancelled

    def __post_init__(self) -> None:
        self.gate.set()

    async def generate(self, name: str, params: GenerationParams) -> np.ndarray:
        raise AssertionError("the Videos API never asks for images")

    async def generate_video(self, name: str, params: GenerationParams, image: np.ndarray | None,
                             on_progress: ProgressCallback | None = None) -> np.ndarray:
        self.calls.append((name, params, image))
        try:
            for step in range(params.num_inference_steps):
                while step > 0 and not self.gate.is_set():
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.001)
                if on_progress is not None:
                    await on_progress((step + 1) / params.num_inference_steps)
        except asyncio.CancelledError:
            self.cancelled.append(params.prompt)
            raise
        if self.failure is not None:
            raise self.failure
        return fake_frames(params, image)

    async def ready(self) -> bool:
        return True

    async def check_adapters(self, name: str, lora: str) -> dict:
        raise AssertionError("not used")

    def reset(self) -> None:
        self.failure = None
        self.gate.set()


def video_settings(root: Path, **overrides: Any) -> FrontendSettings:
    values: dict[str, Any] = {
        "jobs_db": f"sqlite://{root / 'jobs.db'}", "assets_dir": str(root / "assets"), "poll_after_ms": 20,
        "video_idle_poll_s": 0.05, "video_maintenance_s": 0.2, "max_upload_mb": 0.25, "max_input_pixels": 1000 * 1000,
    }
    return FrontendSettings(**(values | overrides))


class Launcher:
    """`launch(settings, engine) -> (base_url, client)`; `stop_all()` stops them (a restart)."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def __call__(self, settings: FrontendSettings, engine: FakeVideoEngine) -> tuple[str, OpenAI]:
        base_url, stop = start_frontend(settings, engine)
        self._stops.append(stop)
        return base_url, make_client(base_url)

    def stop_all(self) -> None:
        while self._stops:
            self._stops.pop()()


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    yield launcher
    launcher.stop_all()


served, engine, client = fake_frontend(FakeVideoEngine)


@pytest.fixture(scope="module")
def frontend_settings(tmp_path_factory: pytest.TempPathFactory) -> FrontendSettings:
    return video_settings(tmp_path_factory.mktemp("videos"))


def wait_for(client: OpenAI, video_id: str, *statuses: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in statuses:
            return video
        assert time.monotonic() < deadline, f"{video_id} stayed {video.status}"
        time.sleep(0.02)


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


# --- create, poll, download ---------------------------------------------------------------------------------


def test_create_and_poll_text_to_video_then_download(client: OpenAI, engine: FakeVideoEngine) -> None:
    before = time.time()
    video = client.videos.create_and_poll(model="tiny-animatediff", prompt="a paper boat", seconds="1",
                                          size="64x48")
    assert (video.status, video.progress, video.error) == ("completed", 100, None)
    assert (video.object, video.model, video.prompt, video.seconds, video.size) == (
        "video", "tiny-animatediff", "a paper boat", "1", "64x48")
    assert video.id.startswith("video_") and video.remixed_from_video_id is None
    assert before - 1 <= video.created_at <= video.completed_at <= time.time() + 1
    assert video.expires_at == pytest.approx(video.completed_at + 86400, abs=2)
    name, params, image = next(call for call in engine.calls if call[1].prompt == "a paper boat")
    assert (name, image) == ("tiny-animatediff", None)
    assert (params.num_frames, params.fps, params.width, params.height) == (8, 8, 64, 48)  # 1 s x default 8 fps
    assert (params.num_inference_steps, params.guidance_scale, params.scheduler, params.num_images) == (
        4, 7.5, "default", 1)

    content = client.videos.download_content(video.id)
    assert content.response.headers["content-type"] == "video/mp4"
    info = probe_mp4(content.content)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (8, 8.0, 64, 48, "h264")


def test_image_to_video_from_a_multipart_upload_with_extensions_and_interpolation(
    client: OpenAI, engine: FakeVideoEngine
) -> None:
    video = client.videos.create_and_poll(
        model="tiny-svd", prompt="", input_reference=("ref.png", png(REFERENCE), "image/png"),
        extra_body={"num_frames": 5, "fps": 6, "motion_bucket_id": 30, "noise_aug_strength": 0.1,
                    "decode_chunk_size": 2, "seed": 9, "interpolate": 2, "width": 72, "height": 40,
                    "num_inference_steps": 2, "guidance_scale": 2.5},
    )
    assert video.status == "completed", video.error
    assert (video.seconds, video.size) == ("0.833333", "72x40")
    _, params, image = next(call for call in engine.calls if call[1].seed == 9)
    assert image is not None and np.array_equal(image, REFERENCE)  # PNG round trip: exact
    assert (params.num_frames, params.fps, params.motion_bucket_id, params.noise_aug_strength,
            params.decode_chunk_size, params.num_inference_steps, params.guidance_scale) == (5, 6, 30, 0.1, 2, 2, 2.5)
    info = probe_mp4(client.videos.download_content(video.id).content)
    assert (info.frames, info.fps, info.width, info.height) == ((5 - 1) * 2 + 1, 12.0, 72, 40)


def test_thumbnail_and_spritesheet_variants(client: OpenAI, served: tuple[str, FakeVideoEngine]) -> None:
    video = client.videos.create_and_poll(model="tiny-animatediff", prompt="a lighthouse",
                                          extra_body={"num_frames": 6})
    for variant, content_type, pil_format in (("thumbnail", "image/webp", "WEBP"),
                                              ("spritesheet", "image/jpeg", "JPEG")):
        content = client.videos.download_content(video.id, variant=variant)
        assert content.response.headers["content-type"] == content_type
        image = Image.open(io.BytesIO(content.content))
        assert image.format == pil_format
        assert image.size == ((64, 48) if variant == "thumbnail" else (3 * 64, 2 * 48))  # 6 tiles, 3 columns
    status, _, body = http("GET", f"{served[0]}/v1/videos/{video.id}/content?variant=poster")
    assert status == 400
    assert_error_body(body, param="variant", type="invalid_request_error")


def test_poll_header_while_queued_or_running_only(client: OpenAI, engine: FakeVideoEngine) -> None:
    engine.gate.clear()
    video = client.videos.create(model="tiny-animatediff", prompt="a slow sunrise")
    assert video.status == "queued" and video.progress == 0
    running = wait_for(client, video.id, "in_progress")
    raw = client.videos.with_raw_response.retrieve(video.id)
    assert raw.headers["openai-poll-after-ms"] == "20"
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.download_content(video.id)
    assert (refused.value.code, refused.value.param) == ("video_not_ready", "video_id")
    engine.gate.set()
    done = wait_for(client, video.id, "completed")
    assert 0 <= running.progress <= 99 and done.progress == 100
    assert "openai-poll-after-ms" not in client.videos.with_raw_response.retrieve(video.id).headers


def test_seed_000_video_generations_json(client: OpenAI, served: tuple[str, FakeVideoEngine]) -> None:
    payload = {"prompt": "a timelapse of a flower blooming", "model": "tiny-animatediff", "num_frames": 16, "fps": 8}
    status, headers, body = http("POST", f"{served[0]}/v1/video/generations", json.dumps(payload).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 200, body
    created = json.loads(body)
    assert (created["object"], created["status"], created["seconds"], created["size"]) == ("video", "queued", "2",
                                                                                              "64x48")
    assert headers["openai-poll-after-ms"] == "20" and created["error"] is None
    done = wait_for(client, created["id"], "completed")
    assert probe_mp4(client.videos.download_content(done.id).content).frames == 16


def test_json_body_on_v1_videos_and_default_model(client: OpenAI, served: tuple[str, FakeVideoEngine]) -> None:
    """No model: the first video pipeline (tiny-animatediff; tiny-sd makes images and tiny-svd sorts later)."""
    status, _, body = http("POST", f"{served[0]}/v1/videos", json.dumps({"prompt": "waves", "seconds": 2}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200, body
    created = json.loads(body)
    assert (created["model"], created["seconds"]) == ("tiny-animatediff", "2")


# --- list, delete, remix ------------------------------------------------------------------------------------


def test_list_pages_with_the_client_iterator_in_both_orders(tmp_path: Path, launch: Launcher) -> None:
    base_url, client = launch(video_settings(tmp_path, video_workers=0), FakeVideoEngine())
    ids = [client.videos.create(model="tiny-animatediff", prompt=f"clip {i}").id for i in range(5)]
    assert [video.id for video in client.videos.list(limit=2)] == ids[::-1]  # desc by default
    assert [video.id for video in client.videos.list(limit=2, order="asc")] == ids
    first = client.videos.list(limit=2, order="asc")
    assert (first.has_more, first.last_id, [v.id for v in first.data]) == (True, ids[1], ids[:2])
    status, _, body = http("GET", f"{base_url}/v1/videos?limit=2&order=asc&after={ids[3]}")
    page = json.loads(body)
    assert status == 200 and page["object"] == "list"
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[4], ids[4], False)
    for query, param in (("after=video_nope", "after"), ("limit=0", "limit"), ("limit=101", "limit"),
                         ("order=sideways", "order")):
        status, _, body = http("GET", f"{base_url}/v1/videos?{query}")
        assert status == 400, query
        assert_error_body(body, param=param)


def test_delete_removes_the_job_and_its_files(client: OpenAI, frontend_settings: FrontendSettings) -> None:
    video = client.videos.create_and_poll(model="tiny-animatediff", prompt="to be deleted")
    assets = Path(frontend_settings.assets_dir)
    assert sorted(p.name for p in assets.glob(f"{video.id}*")) == [
        f"{video.id}.mp4", f"{video.id}.spritesheet.jpg", f"{video.id}.thumbnail.webp"]
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (video.id, "video.deleted", True)
    assert list(assets.glob(f"{video.id}*")) == []
    for call in (lambda: client.videos.retrieve(video.id), lambda: client.videos.delete(video.id),
                 lambda: client.videos.download_content(video.id), lambda: client.videos.remix(video.id, prompt="x")):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert (missing.value.code, missing.value.param) == ("video_not_found", "video_id")


def test_delete_stops_a_running_job_at_its_next_progress_report(client: OpenAI, engine: FakeVideoEngine) -> None:
    engine.gate.clear()
    video = client.videos.create(model="tiny-animatediff", prompt="stopped at a step")
    wait_for(client, video.id, "in_progress")
    client.videos.delete(video.id)
    engine.gate.set()  # the next step reports progress; the store says the job is gone (lease: 30 s)
    deadline = time.monotonic() + 5
    while "stopped at a step" not in engine.cancelled:
        assert time.monotonic() < deadline, "the running job was not cancelled"
        time.sleep(0.02)


def test_delete_stops_a_running_job_through_its_lease(tmp_path: Path, launch: Launcher) -> None:
    """The worker is held inside a step; the lease renewal (every lease/3) finds the job gone and cancels
    the engine call. The worker then goes on with the next job."""
    engine = FakeVideoEngine()
    engine.gate.clear()
    _, client = launch(video_settings(tmp_path, video_workers=1, job_lease_s=0.6), engine)
    video = client.videos.create(model="tiny-svd", prompt="held", input_reference=("a.png", png(REFERENCE)))
    wait_for(client, video.id, "in_progress")
    client.videos.delete(video.id)
    deadline = time.monotonic() + 5
    while engine.cancelled != ["held"]:
        assert time.monotonic() < deadline, "the running job was not cancelled"
        time.sleep(0.02)
    engine.gate.set()
    after = client.videos.create_and_poll(model="tiny-animatediff", prompt="next")
    assert after.status == "completed"
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == sorted(
        f"{after.id}{suffix}" for suffix in (".mp4", ".spritesheet.jpg", ".thumbnail.webp"))


def test_remix_reuses_the_request_and_seed_with_a_new_prompt(client: OpenAI, engine: FakeVideoEngine) -> None:
    source = client.videos.create_and_poll(model="tiny-svd", prompt="", input_reference=("r.png", png(REFERENCE)),
                                           extra_body={"num_frames": 4, "interpolate": 4})
    remix = client.videos.remix(source.id, prompt="the same, at dusk")
    assert (remix.status, remix.remixed_from_video_id, remix.model) == ("queued", source.id, "tiny-svd")
    assert remix.id != source.id
    done = wait_for(client, remix.id, "completed")
    assert (done.prompt, done.seconds, done.size) == ("the same, at dusk", source.seconds, source.size)
    calls = {call[1].prompt: call for call in engine.calls if call[0] == "tiny-svd"}
    original, remixed = calls[""], calls["the same, at dusk"]
    assert replace(remixed[1], prompt="") == original[1]  # seed and every other field
    assert np.array_equal(remixed[2], REFERENCE)
    assert probe_mp4(client.videos.download_content(remix.id).content).frames == (4 - 1) * 4 + 1
    with pytest.raises(openai.BadRequestError):
        client.videos.remix(client.videos.create(model="tiny-animatediff", prompt="x").id, prompt="  ")


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [(EngineError("denoiser failed: bad latent shape"), "generation_failed", "denoiser failed: bad latent shape"),
     (InvalidRequestError("num_frames must be between 2 and 32, got 40", "num_frames"), "invalid_request",
      "num_frames must be between 2 and 32, got 40"),
     (RuntimeError("secret internals"), "generation_failed", "internal error")],
)
def test_failing_engine_fails_the_job_with_code_and_message(
    client: OpenAI, engine: FakeVideoEngine, failure: Exception, code: str, message: str
) -> None:
    engine.failure = failure
    video = client.videos.create_and_poll(model="tiny-animatediff", prompt="doomed")
    assert video.status == "failed" and video.error is not None
    assert video.error.code == code and message in video.error.message
    assert "secret" not in video.error.message
    assert video.expires_at is not None and video.completed_at is not None
    with pytest.raises(openai.BadRequestError):
        client.videos.download_content(video.id)


# --- durability: restarts, leases, expiry ---------------------------------------------------------------------


def test_jobs_survive_a_restart(tmp_path: Path, launch: Launcher) -> None:
    """Queued by a frontend that runs no workers; a new frontend over the same database and directory runs them."""
    engine = FakeVideoEngine()
    _, client = launch(video_settings(tmp_path, video_workers=0), engine)
    t2v = client.videos.create(model="tiny-animatediff", prompt="kept")
    i2v = client.videos.create(model="tiny-svd", prompt="", input_reference=("a.png", png(REFERENCE)))
    time.sleep(0.3)
    assert client.videos.retrieve(t2v.id).status == "queued" and engine.calls == []
    launch.stop_all()

    _, client = launch(video_settings(tmp_path, video_workers=2), engine)
    assert wait_for(client, t2v.id, "completed", "failed").status == "completed"
    assert wait_for(client, i2v.id, "completed", "failed").status == "completed"
    assert np.array_equal(next(call[2] for call in engine.calls if call[0] == "tiny-svd"), REFERENCE)


def _claim_as_a_dead_worker(db: Path) -> str:
    async def claim() -> str:
        store = await open_job_store(f"sqlite://{db}")
        try:
            job = await store.claim("dead-replica", lease_s=0.0)  # expires at once
            assert job is not None
            return job.id
        finally:
            await store.close()

    return asyncio.run(claim())


def _job_row(db: Path, video_id: str) -> Any:
    async def get() -> Any:
        store = await open_job_store(f"sqlite://{db}")
        try:
            return await store.get(video_id)
        finally:
            await store.close()

    return asyncio.run(get())


def test_a_stopping_replica_requeues_its_running_job_at_once(tmp_path: Path, launch: Launcher) -> None:
    """Shutdown (a drain's end) releases the lease: the job is queued again before any lease expiry, its
    Triton work is cancelled, the attempt is not counted, and the next replica runs it."""
    engine = FakeVideoEngine()
    engine.gate.clear()  # the run holds before its second step
    _, client = launch(video_settings(tmp_path, video_workers=1, job_lease_s=600), engine)
    video = client.videos.create(model="tiny-animatediff", prompt="interrupted by a drain")
    wait_for(client, video.id, "in_progress")
    launch.stop_all()
    row = _job_row(tmp_path / "jobs.db", video.id)
    assert (row.status, row.worker_id, row.lease_expires_at, row.attempts) == ("queued", None, None, 0)
    assert engine.cancelled == ["interrupted by a drain"]

    engine.gate.set()
    _, client = launch(video_settings(tmp_path, video_workers=1, video_max_attempts=1), engine)
    assert wait_for(client, video.id, "completed", "failed").status == "completed"


@pytest.mark.parametrize(("max_attempts", "outcome"), [(2, "completed"), (1, "failed")])
def test_job_of_a_dead_worker_is_requeued_or_fails_interrupted(
    tmp_path: Path, launch: Launcher, max_attempts: int, outcome: str
) -> None:
    engine = FakeVideoEngine()
    _, client = launch(video_settings(tmp_path, video_workers=0), engine)
    video = client.videos.create(model="tiny-animatediff", prompt="orphan")
    launch.stop_all()
    assert _claim_as_a_dead_worker(tmp_path / "jobs.db") == video.id

    _, client = launch(video_settings(tmp_path, video_workers=1, video_max_attempts=max_attempts), engine)
    done = wait_for(client, video.id, "completed", "failed")
    assert done.status == outcome
    if outcome == "failed":
        assert done.error is not None and done.error.code == "interrupted" and engine.calls == []


def test_finished_jobs_expire_with_their_files(tmp_path: Path, launch: Launcher) -> None:
    _, client = launch(video_settings(tmp_path, video_workers=1, video_ttl_s=2), FakeVideoEngine())
    video = client.videos.create_and_poll(model="tiny-animatediff", prompt="brief")
    # A completed job's files are there for as long as its record is (the record is deleted first).
    assert video.status == "completed" and video.expires_at is not None
    assert video.expires_at >= video.completed_at + 2
    assert probe_mp4(client.videos.download_content(video.id).content).frames > 0
    deadline = time.monotonic() + 10
    while True:
        try:
            client.videos.retrieve(video.id)
        except openai.NotFoundError:
            if not any((tmp_path / "assets").iterdir()):
                break
        assert time.monotonic() < deadline, "the expired job and its files were not collected"
        time.sleep(0.1)


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"model": "tiny-sd"}, "model", "invalid_value"),  # an image pipeline
        ({"size": "64by48"}, "size", "invalid_value"),
        ({"size": "60x48"}, "size", "invalid_value"),  # not a multiple of 8
        ({"size": "64x1024"}, "size", "invalid_value"),  # past max_height
        ({"extra_body": {"width": 36}}, "size", "invalid_value"),
        ({"seconds": "0"}, "seconds", "invalid_value"),
        ({"seconds": "-2"}, "seconds", "invalid_value"),
        ({"seconds": "soon"}, "seconds", "invalid_value"),
        ({"seconds": "12"}, "seconds", "invalid_value"),  # 96 frames at 8 fps > 16
        ({"extra_body": {"num_frames": 1}}, "num_frames", "invalid_value"),
        ({"extra_body": {"num_frames": 17}}, "num_frames", "invalid_value"),
        ({"extra_body": {"fps": 0}}, "fps", "invalid_value"),
        ({"extra_body": {"fps": 61}}, "fps", "invalid_value"),
        ({"extra_body": {"interpolate": 3}}, "interpolate", "invalid_value"),
        ({"extra_body": {"num_inference_steps": 21}}, "num_inference_steps", "invalid_value"),
        ({"extra_body": {"scheduler": "ddim"}}, "scheduler", "invalid_value"),
        ({"extra_body": {"motion_bucket_id": 2000}}, "motion_bucket_id", "invalid_value"),
        ({"extra_body": {"decode_chunk_size": 99}}, "decode_chunk_size", "invalid_value"),
        ({"extra_body": {"seed": -1}}, "seed", "invalid_value"),
        ({"extra_body": {"style": "anime"}}, "style", "unknown_parameter"),
        ({"prompt": "   "}, "prompt", "invalid_value"),
        ({"input_reference": ("a.png", png(REFERENCE))}, "input_reference", "invalid_value"),  # t2v
        ({"model": "tiny-svd"}, "input_reference", "invalid_value"),  # i2v without an image
        ({"model": "tiny-svd", "input_reference": ("a.txt", b"not an image", "text/plain")}, "input_reference",
         "invalid_value"),
        ({"model": "tiny-svd", "input_reference": ("a.png", png(REFERENCE)[:200])}, "input_reference",
         "invalid_value"),  # truncated
        ({"model": "tiny-svd", "input_reference": ("bomb.png", png_header_only(1200, 1000))}, "input_reference",
         "invalid_value"),  # past max_input_pixels, refused from the header
        ({"model": "tiny-svd", "input_reference": ("bomb.png", png_header_only(100_000, 100_000))},
         "input_reference", "invalid_value"),  # past Pillow's own bomb limit
        ({"model": "tiny-svd", "input_reference": ("big.png", b"\x89PNG" + bytes(300_000))}, "input_reference",
         "file_too_large"),  # max_upload_mb 0.25
    ],
)
def test_bad_requests_are_400_in_openai_shape_and_queue_nothing(
    client: OpenAI, engine: FakeVideoEngine, kwargs: dict[str, Any], param: str, code: str
) -> None:
    before = [video.id for video in client.videos.list(limit=100)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(**({"model": "tiny-animatediff", "prompt": "a fox"} | kwargs))
    body = refused.value.body
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert (refused.value.param, refused.value.code, body["type"]) == (param, code, "invalid_request_error"), body
    assert [video.id for video in client.videos.list(limit=100)] == before


def test_an_unknown_model_is_a_404_as_on_the_image_routes(client: OpenAI, engine: FakeVideoEngine) -> None:
    before = [video.id for video in client.videos.list(limit=100)]
    with pytest.raises(openai.NotFoundError) as refused:
        client.videos.create(model="sora-2", prompt="a fox")
    body = refused.value.body
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert (refused.value.param, refused.value.code, body["type"]) == ("model", "model_not_found",
                                                                      "invalid_request_error"), body
    assert [video.id for video in client.videos.list(limit=100)] == before


def test_malformed_bodies_are_400(served: tuple[str, FakeVideoEngine]) -> None:
    url = f"{served[0]}/v1/videos"
    cases = [
        (b"{not json", "application/json", None, "invalid_json"),
        (b"[1, 2]", "application/json", None, "invalid_json"),
        (json.dumps({"prompt": "x", "input_reference": {"image_url": "https://e.com/a.png"}}).encode(),
         "application/json", "input_reference", "invalid_value"),
        (b"prompt=x", "text/plain", None, "unsupported_content_type"),
        (b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b\r\nContent-Disposition: "
         b"form-data; name=\"input_reference[image_url]\"\r\n\r\nhttps://e.com/a.png\r\n--b--\r\n",
         "multipart/form-data; boundary=b", "input_reference", "invalid_value"),
        (b"--b\r\nContent-Disposition: form-data; name=\"poster\"; filename=\"a.png\"\r\n\r\nxx\r\n--b--\r\n",
         "multipart/form-data; boundary=b", "poster", "unknown_parameter"),
        (b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b\r\nContent-Disposition: "
         b"form-data; name=\"prompt\"\r\n\r\ny\r\n--b--\r\n", "multipart/form-data; boundary=b", "prompt",
         "invalid_value"),
    ]
    for body, content_type, param, code in cases:
        status, _, answer = http("POST", url, body, {"Content-Type": content_type})
        assert status == 400, (body, answer)
        assert_error_body(answer, param=param, code=code)


def test_oversized_upload_without_content_length_is_cut_off(served: tuple[str, FakeVideoEngine]) -> None:
    """Chunked: no length is declared, so the stream is counted as it arrives."""
    parts = urllib.parse.urlsplit(served[0])
    boundary = "b"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(100):  # 6.4 MB, far past the 0.25 MB allowed
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    connection = HTTPConnection(parts.netloc, timeout=10)
    try:
        try:
            connection.request("POST", "/v1/videos", chunks(), {
                "Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
                encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        response = connection.getresponse()
        assert response.status == 400
        assert_error_body(response.read(), param="input_reference", code="file_too_large")
    finally:
        connection.close()


def test_openapi_documents_the_videos_api(served: tuple[str, FakeVideoEngine]) -> None:
    spec = json.loads(http("GET", f"{served[0]}/openapi.json")[2])
    assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/videos/{video_id}/remix",
            "/v1/video/generations"} <= set(spec["paths"])
    content = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["input_reference"]["format"] == "binary"
    assert "num_frames" in content["application/json"]["schema"]["properties"]
