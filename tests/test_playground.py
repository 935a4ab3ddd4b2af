"""The playground page (`GET /`) in headless Chromium against the real frontend and a fake engine:
the model list, a streamed generation with partial images, an edit upload, errors shown, and
nothing loaded from outside the frontend. `playground_driver.see_playground` drives the page and is
reusable against a real Triton."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from frontend_fixtures import FakePipelines, fake_frontend
from PIL import Image
from playground_driver import PlaygroundRun, chromium, see_playground
from playwright.sync_api import Browser
from test_frontend_unit import fake_images

from dgate.core.capabilities import Capabilities
from dgate.core.errors import InvalidRequestError
from dgate.core.limits import GenerationLimits
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.engine import EditImages, PartialCallback, StepCallback
from dgate.frontend.schemas import GenerationParams
from dgate.frontend.settings import FrontendSettings

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "artifacts"

IMAGE_LIMITS = GenerationLimits(
    family="sd", default_width=64, default_height=48, min_size=32, max_width=256, max_height=256,
    size_multiple=16, default_steps=6, max_steps=50, max_images=4, default_guidance_scale=7.5,
    max_guidance_scale=20.0, default_scheduler="euler", schedulers=("euler", "ddim", "default"),
    default_max_sequence_length=0, max_sequence_length=0, true_cfg=False,
)
VIDEO_LIMITS = GenerationLimits(
    family="animatediff", default_width=64, default_height=64, min_size=32, max_width=128, max_height=128,
    size_multiple=8, default_steps=4, max_steps=25, max_images=1, default_guidance_scale=7.5,
    max_guidance_scale=20.0, default_scheduler="euler", schedulers=("euler", "default"),
    default_max_sequence_length=0, max_sequence_length=0, true_cfg=False,
    default_num_frames=8, max_num_frames=16, default_fps=8,
)


class PlaygroundEngine(FakePipelines):
    """An `Engine` with one streaming, editing image pipeline and one video pipeline (which the
    page must not offer); it reports every step and the partial images asked for."""

    def __init__(self) -> None:
        self.pipelines = {
            "tiny-sd": ServedPipeline(IMAGE_LIMITS, Capabilities(edits=True), streams=True),
            # The blocking denoiser: no partial images.
            "tiny-sd-blocking": ServedPipeline(IMAGE_LIMITS, Capabilities(edits=True), streams=False),
            "tiny-animatediff": ServedPipeline(VIDEO_LIMITS, Capabilities(task="text-to-video")),
        }
        self.calls: list[dict[str, Any]] = []

    async def generate(self, name: str, params: GenerationParams, *, edit: EditImages | None = None,
                       partial_images: int = 0, on_step: StepCallback | None = None,
                       on_partial: PartialCallback | None = None) -> np.ndarray:
        self.calls.append({"name": name, "params": params, "edit": edit, "partial_images": partial_images})
        if params.prompt == "fail":
            raise InvalidRequestError("the fake pipeline refuses this prompt", "prompt")
        final = fake_images(params)
        if edit is not None:  # the edit shows through: half the uploaded image, half the fake
            final = (final // 2 + edit.image[None] // 2).astype(np.uint8)
        total = params.num_inference_steps
        partial_at = {round((k + 1) * total / (partial_images + 1)): k for k in range(partial_images)}
        for done in range(1, total + 1):
            await asyncio.sleep(0.01)
            if on_step is not None:
                await on_step(done, total)
            if on_partial is not None and done in partial_at:
                await on_partial(partial_at[done], (final.astype(np.float32) * done / total).astype(np.uint8))
        return final

    async def generate_video(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    async def ready(self) -> bool:
        return True

    async def check_adapters(self, name: str, lora: str) -> dict:
        return {}

    def reset(self) -> None:
        self.calls.clear()


served = fake_frontend(PlaygroundEngine).served  # the page tests use neither the engine fixture nor a client


@pytest.fixture(scope="module")
def frontend_settings() -> FrontendSettings:
    return FrontendSettings()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def decode_data_url(src: str) -> Image.Image:
    header, _, payload = src.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def assert_all_local(run: PlaygroundRun, base_url: str) -> None:
    """Everything the page loaded came from the frontend itself (or was a data:/blob: URL), and the
    browser reported no error (a Content-Security-Policy violation would be one)."""
    outside = [url for url in run.requests if not url.startswith((base_url, "data:", "blob:"))]
    assert outside == [], outside
    # (Chromium logs every 4xx answer as "Failed to load resource": those are the API's, not the page's.)
    errors = [text for text in run.console_errors if not text.startswith("Failed to load resource")]
    assert errors == [], errors


def test_page_and_static_files_are_served(served: tuple[str, PlaygroundEngine]) -> None:
    base_url = served[0]
    with urllib.request.urlopen(f"{base_url}/") as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = response.read().decode()
    assert 'src="/static/playground.js"' in page and 'href="/static/playground.css"' in page
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        with urllib.request.urlopen(f"{base_url}/static/{name}") as response:
            assert response.headers["Content-Type"].startswith(kind) and response.read()
    for missing in ("index.html", "..%2Fapp.py", "nothing.js"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{base_url}/static/{missing}")
        assert error.value.code == 404


def test_generate_streams_partials_and_shows_images_and_seed(
    served: tuple[str, PlaygroundEngine], browser: Browser, tmp_path: Path
) -> None:
    base_url, engine = served
    screenshot = tmp_path / "playground.png"
    run = see_playground(base_url, browser=browser, model="tiny-sd", prompt="a red fox in the snow", n=2,
                         size="64x48", steps=6, negative_prompt="blurry", partial_images=2, screenshot=screenshot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / "playground.png")

    assert run.models == ["tiny-sd", "tiny-sd-blocking"]  # the video pipeline is not offered
    assert run.state == "done" and run.error == "", (run.status, run.error)
    assert run.transport == "sse" and run.partials == 2 * 2  # each partial of each image, as they came
    assert engine.calls[-1]["partial_images"] == 2
    assert len(run.images) == 2
    for image in run.images:
        assert image["src"].startswith("data:image/png;base64,")
        assert (image["width"], image["height"]) == (64, 48)
    assert run.seed.isdigit()

    body = run.sent[0].json()  # the page always sends a seed, random when the field is empty
    assert body["seed"] == int(run.seed)
    assert body["stream"] is True and body["partial_images"] == 2
    params = engine.calls[-1]["params"]
    assert (params.prompt, params.negative_prompt, params.num_images, params.num_inference_steps) == (
        "a red fox in the snow", "blurry", 2, 6)
    assert params.seed == int(run.seed)
    expected = fake_images(params)
    for i, image in enumerate(run.images):  # the very pixels the engine made
        assert np.array_equal(np.asarray(decode_data_url(image["src"]).convert("RGB")), expected[i])
    assert screenshot.stat().st_size > 0
    assert_all_local(run, base_url)


def test_an_explicit_seed_is_sent_and_shown(served: tuple[str, PlaygroundEngine], browser: Browser) -> None:
    base_url, engine = served
    run = see_playground(base_url, browser=browser, prompt="a lighthouse", seed=1234567)
    assert run.state == "done", run.error
    assert run.seed == "1234567" and engine.calls[-1]["params"].seed == 1234567
    assert len(run.images) == 1 and run.images[0]["width"] == 64  # the model's default size


def test_edit_uploads_the_image_and_mask(served: tuple[str, PlaygroundEngine], browser: Browser,
                                         tmp_path: Path) -> None:
    base_url, engine = served
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(source)
    Image.new("RGBA", (64, 48), (0, 0, 0, 0)).save(mask)
    run = see_playground(base_url, browser=browser, prompt="make it blue", edit_image=source, edit_mask=mask,
                         size="64x48", steps=4, seed=7, partial_images=1, screenshot=tmp_path / "edit.png")
    assert run.state == "done", (run.status, run.error)
    assert run.sent[0].url.endswith("/v1/images/edits")
    assert run.sent[0].content_type.startswith("multipart/form-data")
    call = engine.calls[-1]
    assert call["edit"] is not None and call["edit"].image.shape == (48, 64, 3)
    assert call["edit"].mask is not None
    assert run.seed == "7" and call["params"].seed == 7
    assert call["params"].strength == 1.0  # the default with a mask
    assert run.transport == "sse" and run.partials == 1
    assert len(run.images) == 1 and (run.images[0]["width"], run.images[0]["height"]) == (64, 48)
    assert_all_local(run, base_url)


def test_a_refused_stream_falls_back_to_one_json_answer(served: tuple[str, PlaygroundEngine],
                                                        browser: Browser) -> None:
    """A pipeline with the blocking denoiser cannot stream previews: the stream is refused with a 400
    and the page asks again without streaming, showing the images and the seed of the JSON answer."""
    base_url, engine = served
    run = see_playground(base_url, browser=browser, model="tiny-sd-blocking", prompt="a quiet harbour",
                         partial_images=2, seed=99)
    assert run.state == "done" and run.error == "", (run.status, run.error)
    assert len(run.images) == 1 and run.images[0]["width"] > 0 and run.seed == "99"
    call = engine.calls[-1]
    assert call["name"] == "tiny-sd-blocking" and call["partial_images"] == 0 and call["params"].seed == 99
    if run.transport == "json":  # asked twice: streamed with previews, then plainly
        assert [sent.json().get("stream") for sent in run.sent] == [True, None]


def test_errors_are_shown(served: tuple[str, PlaygroundEngine], browser: Browser) -> None:
    base_url = served[0]
    run = see_playground(base_url, browser=browser, prompt="fail")
    assert run.state == "error" and "refuses this prompt" in run.error
    assert run.images == []
    run = see_playground(base_url, browser=browser, prompt="a cat", size="100x100")  # not a multiple of 16
    assert run.state == "error" and "multiple" in run.error, run.error
