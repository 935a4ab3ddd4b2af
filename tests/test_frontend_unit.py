"""The frontend against a fake engine, served by a real uvicorn and called with the official `openai`
client (and raw urllib where headers or non-OpenAI routes matter)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from frontend_fixtures import assert_error_body, fake_frontend, start_frontend
from openai import OpenAI
from PIL import Image
from tritonclient.utils import InferenceServerException

from dgate.core.errors import InvalidRequestError
from dgate.core.limits import GenerationLimits
from dgate.core.served_pipeline import ServedPipeline
from dgate.core.tensors import ENSEMBLE_INPUTS
from dgate.frontend.assets import AssetStore
from dgate.frontend.engine import (
    EngineError,
    EngineTimeout,
    ModelNotFound,
    ServiceUnavailable,
    TritonEngine,
)
from dgate.frontend.engine.triton_errors import failure_message, map_triton_error
from dgate.frontend.image_store import ImageStore
from dgate.frontend.logs import JsonFormatter
from dgate.frontend.schemas import GenerationParams
from dgate.frontend.settings import FrontendSettings

# The scheduler names as `dgate.core.schedulers.scheduler_names` lists them, written out here so that
# these tests stay torch-free.
UNET_SCHEDULERS = ("euler", "euler_a", "ddim", "dpm++", "pndm", "default")
FLOW_SCHEDULERS = ("flow_euler", "flow_dpm++", "default")
SD_LIMITS = GenerationLimits(
    family="sd",
    default_width=64,
    default_height=48,
    min_size=32,
    max_width=256,
    max_height=256,
    size_multiple=16,
    default_steps=20,
    max_steps=50,
    max_images=4,
    default_guidance_scale=7.5,
    max_guidance_scale=20.0,
    default_scheduler="euler",
    schedulers=UNET_SCHEDULERS,
    default_max_sequence_length=0,  # CLIP only: no T5 encoder
    max_sequence_length=0,
    true_cfg=False,
)
PIXART_LIMITS = GenerationLimits(
    family="pixart",
    default_width=32,
    default_height=32,
    min_size=32,
    max_width=128,
    max_height=128,
    size_multiple=8,
    default_steps=4,
    max_steps=8,
    max_images=2,
    default_guidance_scale=4.5,
    max_guidance_scale=10.0,
    default_scheduler="dpm++",
    schedulers=UNET_SCHEDULERS,
    default_max_sequence_length=120,  # T5
    max_sequence_length=300,
    true_cfg=False,
)
FLUX_LIMITS = GenerationLimits(
    family="flux",
    default_width=64,
    default_height=64,
    min_size=32,
    max_width=128,
    max_height=128,
    size_multiple=16,
    default_steps=4,
    max_steps=28,
    max_images=2,
    default_guidance_scale=3.5,
    max_guidance_scale=10.0,
    default_scheduler="flow_euler",
    schedulers=FLOW_SCHEDULERS,
    default_max_sequence_length=256,  # T5 (and CLIP's 77)
    max_sequence_length=512,
    true_cfg=True,
)


def fake_images(params: GenerationParams) -> np.ndarray:
    """Deterministic images: red = x ramp, green = y ramp, blue = image index and seed."""
    h, w = params.height, params.width
    y, x = np.mgrid[0:h, 0:w]
    images = np.empty((params.num_images, h, w, 3), np.uint8)
    for i in range(params.num_images):
        images[i, ..., 0] = x * 255 // max(w - 1, 1)
        images[i, ..., 1] = y * 255 // max(h - 1, 1)
        images[i, ..., 2] = (i * 50 + params.seed) % 256
    return images


class FakeEngine:
    """A catalog of three pipelines and plain generation; `up` and `failure` switch on the error paths."""

    def __init__(self) -> None:
        self.pipelines = {"tiny-sd": ServedPipeline(SD_LIMITS), "tiny-pixart": ServedPipeline(PIXART_LIMITS),
                          "tiny-flux": ServedPipeline(FLUX_LIMITS)}
        self.calls: list[tuple[str, GenerationParams]] = []
        self.up = True
        self.failure: Exception | None = None

    def _check_up(self) -> None:
        if not self.up:
            raise ServiceUnavailable("Triton is not available: failed to connect to all addresses")

    async def list_pipelines(self) -> list[str]:
        self._check_up()
        return sorted(self.pipelines)

    async def served_pipeline(self, name: str) -> ServedPipeline:
        self._check_up()
        if name not in self.pipelines:
            raise ModelNotFound(name)
        return self.pipelines[name]

    async def generate(self, name: str, params: GenerationParams) -> np.ndarray:
        self._check_up()
        self.calls.append((name, params))
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return fake_images(params)

    async def ready(self) -> bool:
        return self.up

    def reset(self) -> None:
        self.up, self.failure = True, None


served, engine, client = fake_frontend(FakeEngine)


@pytest.fixture(scope="module")
def frontend_settings() -> FrontendSettings:
    return FrontendSettings()  # the defaults, video workers included


@pytest.fixture
def base_url(served: tuple[str, FakeEngine]) -> str:
    return served[0]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, headers, body bytes) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http("POST", url, data, {"Content-Type": "application/json", **(headers or {})})


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


# --- generation ---------------------------------------------------------------------------------------


def test_generate_n_non_square_png_is_one_engine_call_with_exact_pixels(
    client: OpenAI, engine: FakeEngine
) -> None:
    calls_before = len(engine.calls)
    response = client.images.generate(
        model="tiny-sd",
        prompt="a red fox",
        n=3,
        size="128x64",
        extra_body={"seed": 42, "negative_prompt": "blur"},
    )
    assert len(engine.calls) == calls_before + 1  # all n images in ONE Triton request
    name, params = engine.calls[-1]
    assert name == "tiny-sd"
    assert params == GenerationParams(
        prompt="a red fox",
        negative_prompt="blur",
        num_images=3,
        num_inference_steps=20,
        guidance_scale=7.5,
        seed=42,
        height=64,
        width=128,
        scheduler="euler",  # none requested: the pipeline's default_scheduler
        max_sequence_length=0,  # no T5 encoder
        true_cfg_scale=1.0,
    )
    assert (response.size, response.output_format, response.quality, response.background) == (
        "128x64",
        "png",
        "medium",
        "opaque",
    )
    assert response.model_extra["seed"] == 42
    assert response.usage.total_tokens == 0 and response.usage.input_tokens_details.text_tokens == 0
    assert abs(response.created - time.time()) < 60
    expected = fake_images(params)
    assert len(response.data) == 3
    for i, item in enumerate(response.data):
        assert item.url is None and item.revised_prompt is None
        image = decode(item.b64_json)
        assert (image.format, image.size, image.mode) == ("PNG", (128, 64), "RGB")
        np.testing.assert_array_equal(np.asarray(image), expected[i])  # PNG is lossless


@pytest.mark.parametrize("fmt,pil_format", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_honour_output_compression(client: OpenAI, fmt: str, pil_format: str) -> None:
    sizes = {}
    for compression in (5, 95):
        response = client.images.generate(
            model="tiny-sd",
            prompt="waves",
            size="256x128",
            output_format=fmt,
            output_compression=compression,
            extra_body={"seed": 7},
        )
        assert response.output_format == fmt
        raw = base64.b64decode(response.data[0].b64_json)
        image = decode(response.data[0].b64_json)
        assert (image.format, image.size) == (pil_format, (256, 128))
        sizes[compression] = len(raw)
        if compression == 95:  # close to the source at high quality
            source = fake_images(GenerationParams(
                prompt="", negative_prompt="", num_images=1, num_inference_steps=1, guidance_scale=0.0, seed=7,
                height=128, width=256, scheduler="default", max_sequence_length=0, true_cfg_scale=1.0,
            ))[0]
            assert np.abs(np.asarray(image.convert("RGB")).astype(int) - source).mean() < 3
    assert sizes[5] < sizes[95]


def test_url_response_is_fetchable_with_content_type(client: OpenAI, base_url: str) -> None:
    response = client.images.generate(
        model="tiny-sd", prompt="a boat", n=2, response_format="url", output_format="webp"
    )
    assert [item.b64_json for item in response.data] == [None, None]
    urls = [item.url for item in response.data]
    assert len(set(urls)) == 2 and all(url.startswith(f"{base_url}/v1/files/img_") for url in urls)
    status, headers, body = http("GET", urls[0])
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert headers["Cache-Control"].startswith("private, max-age=")
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.size) == ("WEBP", (64, 48))  # no size given -> the pipeline's default
    # The openai client's files.content() asks for /v1/files/{id}/content: same bytes.
    assert client.files.content(urls[0].rsplit("/", 1)[1]).content == body


def test_url_expires_and_public_base_url_is_used() -> None:
    settings = FrontendSettings(url_ttl_s=0.3, public_base_url="https://images.example.com/dgate/")
    base_url, stop = start_frontend(settings, FakeEngine())
    try:
        client = OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        url = client.images.generate(model="tiny-sd", prompt="x", response_format="url").data[0].url
        assert url.startswith("https://images.example.com/dgate/v1/files/img_")
        local = f"{base_url}/v1/files/{url.rsplit('/', 1)[1]}"
        assert http("GET", local)[0] == 200
        time.sleep(0.5)
        status, _, body = http("GET", local)
        assert status == 404
        assert_error_body(body, type="invalid_request_error", param="file_id", code="file_not_found")
    finally:
        stop()


@pytest.mark.parametrize(
    "size,expected", [(None, (64, 48)), ("auto", (64, 48)), ("256x256", (256, 256)), ("32x240", (32, 240))]
)
def test_sizes_within_the_pipeline_limits(
    client: OpenAI, size: str | None, expected: tuple[int, int]
) -> None:
    kwargs = {} if size is None else {"size": size}
    response = client.images.generate(model="tiny-sd", prompt="p", **kwargs)
    assert response.size == f"{expected[0]}x{expected[1]}"
    assert decode(response.data[0].b64_json).size == expected


@pytest.mark.parametrize(
    "model,quality,steps,tier",
    [
        ("tiny-sd", "low", 10, "low"),
        ("tiny-sd", "auto", 20, "medium"),
        ("tiny-sd", "standard", 20, "medium"),
        ("tiny-sd", "high", 40, "high"),
        ("tiny-sd", "hd", 40, "high"),
        ("tiny-sd", "xhigh", 50, "xhigh"),
        ("tiny-sd", "max", 50, "max"),
        ("tiny-pixart", "low", 2, "low"),
        ("tiny-pixart", "high", 8, "high"),
    ],
)
def test_quality_maps_to_steps(client: OpenAI, engine: FakeEngine, model, quality, steps, tier) -> None:
    response = client.images.generate(model=model, prompt="p", quality=quality)
    assert engine.calls[-1][1].num_inference_steps == steps
    assert response.quality == tier


def test_extensions_reach_the_engine_and_explicit_steps_drop_quality(
    client: OpenAI, engine: FakeEngine
) -> None:
    response = client.images.generate(
        model="tiny-pixart",
        prompt="p",
        n=2,
        extra_body={"num_inference_steps": 3, "guidance_scale": 0.0, "scheduler": "ddim", "seed": 0},
    )
    params = engine.calls[-1][1]
    assert (params.num_inference_steps, params.guidance_scale, params.scheduler, params.seed) == (
        3,
        0.0,
        "ddim",
        0,
    )
    assert params.num_images == 2 and response.quality is None


def test_default_model_is_the_first_pipeline_or_the_configured_one(
    client: OpenAI, engine: FakeEngine
) -> None:
    client.images.generate(prompt="p")
    assert engine.calls[-1][0] == "tiny-flux"  # sorted first
    other = FakeEngine()
    base_url, stop = start_frontend(FrontendSettings(default_model="tiny-sd"), other)
    try:
        OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0).images.generate(prompt="p")
        assert other.calls[-1][0] == "tiny-sd"
    finally:
        stop()


def test_ignored_openai_fields_are_accepted_and_identifier_echoed(client: OpenAI) -> None:
    response = client.images.generate(
        model="tiny-sd",
        prompt="p",
        style="vivid",
        moderation="low",
        background="opaque",
        user="u-1",
        extra_body={"complexity": "high", "stream": False},
    )
    assert response.background == "opaque" and response.safety_identifier == "u-1"


# --- models ---------------------------------------------------------------------------------------------


# What /v1/models reports beyond OpenAI's fields: the fake engine's limits, written out.
MODEL_FIELDS = {
    "tiny-flux": {
        "family": "flux",
        "task": "image",
        "default_size": "64x64",
        "max_size": "128x128",
        "min_size": 32,
        "size_multiple": 16,
        "default_steps": 4,
        "max_steps": 28,
        "max_images": 2,
        "default_guidance_scale": 3.5,
        "max_guidance_scale": 10.0,
        "default_scheduler": "flow_euler",
        "schedulers": ["flow_euler", "flow_dpm++", "default"],
        "default_max_sequence_length": 256,
        "max_sequence_length": 512,
        "true_cfg": True,
        "precision": "fp32",
        "streams": False,
        "edits": False,
    },
    "tiny-pixart": {
        "family": "pixart",
        "task": "image",
        "default_size": "32x32",
        "max_size": "128x128",
        "min_size": 32,
        "size_multiple": 8,
        "default_steps": 4,
        "max_steps": 8,
        "max_images": 2,
        "default_guidance_scale": 4.5,
        "max_guidance_scale": 10.0,
        "default_scheduler": "dpm++",
        "schedulers": ["euler", "euler_a", "ddim", "dpm++", "pndm", "default"],
        "default_max_sequence_length": 120,
        "max_sequence_length": 300,
        "true_cfg": False,
        "precision": "fp32",
        "streams": False,
        "edits": False,
    },
    "tiny-sd": {
        "family": "sd",
        "task": "image",
        "default_size": "64x48",
        "max_size": "256x256",
        "min_size": 32,
        "size_multiple": 16,
        "default_steps": 20,
        "max_steps": 50,
        "max_images": 4,
        "default_guidance_scale": 7.5,
        "max_guidance_scale": 20.0,
        "default_scheduler": "euler",
        "schedulers": ["euler", "euler_a", "ddim", "dpm++", "pndm", "default"],
        "default_max_sequence_length": 0,
        "max_sequence_length": 0,
        "true_cfg": False,
        "precision": "fp32",
        "streams": False,
        "edits": False,
    },
}
OPENAI_MODEL_KEYS = {"id", "object", "created", "owned_by"}


def test_models_list_and_retrieve(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-flux", "tiny-pixart", "tiny-sd"]
    for model in models.data:
        assert (model.object, model.owned_by) == ("model", "dgate") and abs(model.created - time.time()) < 600
    model = client.models.retrieve("tiny-sd")
    assert (model.id, model.object, model.owned_by) == ("tiny-sd", "model", "dgate")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("text_encoder")
    assert caught.value.code == "model_not_found"


def test_models_report_the_pipeline_limits_on_both_endpoints(client: OpenAI, base_url: str) -> None:
    status, _, body = http("GET", f"{base_url}/v1/models")
    assert status == 200
    listed = json.loads(body)
    assert listed["object"] == "list"
    for item in listed["data"]:
        assert set(item) == OPENAI_MODEL_KEYS | set(MODEL_FIELDS[item["id"]]), item
        assert {key: item[key] for key in MODEL_FIELDS[item["id"]]} == MODEL_FIELDS[item["id"]]
    assert {item["id"] for item in listed["data"]} == set(MODEL_FIELDS)
    for name, expected in MODEL_FIELDS.items():
        status, _, body = http("GET", f"{base_url}/v1/models/{name}")
        assert status == 200
        retrieved = json.loads(body)
        assert {key: retrieved[key] for key in expected} == expected
        # ... and the same object as in the list.
        assert retrieved == next(item for item in listed["data"] if item["id"] == name)
    # The openai client keeps them as extra attributes of its Model.
    model = client.models.retrieve("tiny-flux")
    assert model.model_extra["schedulers"] == ["flow_euler", "flow_dpm++", "default"]
    assert model.model_extra["true_cfg"] is True
    assert [m.model_extra["family"] for m in client.models.list().data] == ["flux", "pixart", "sd"]


# --- bad input ------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),  # max_prompt_chars defaults to 4000
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"n": 5}, "n"),  # OpenAI allows 10, this pipeline 4
    ({"size": "64x"}, "size"),
    ({"size": "65x64"}, "size"),
    ({"size": "64X64"}, "size"),
    ({"size": "0x64"}, "size"),
    ({"size": "16x16"}, "size"),  # below min_size
    ({"size": "1024x1024"}, "size"),  # an OpenAI size, too big for this pipeline
    ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
    ({"extra_body": {"num_inference_steps": 51}}, "num_inference_steps"),
    ({"quality": "high", "extra_body": {"num_inference_steps": 5}}, "num_inference_steps"),
    ({"extra_body": {"scheduler": "magic"}}, "scheduler"),
    ({"extra_body": {"scheduler": "flow_euler"}}, "scheduler"),  # a flow-matching name on a UNet pipeline
    ({"model": "tiny-flux", "extra_body": {"scheduler": "euler"}}, "scheduler"),  # and the reverse
    ({"extra_body": {"max_sequence_length": 16}}, "max_sequence_length"),  # tiny-sd has no T5 encoder
    ({"extra_body": {"max_sequence_length": 0}}, "max_sequence_length"),
    ({"model": "tiny-pixart", "extra_body": {"max_sequence_length": 0}}, "max_sequence_length"),
    ({"model": "tiny-pixart", "extra_body": {"max_sequence_length": 301}}, "max_sequence_length"),
    ({"model": "tiny-flux", "extra_body": {"max_sequence_length": 513}}, "max_sequence_length"),
    ({"model": "tiny-flux", "extra_body": {"max_sequence_length": -1}}, "max_sequence_length"),
    ({"extra_body": {"true_cfg_scale": 4.0}}, "true_cfg_scale"),  # tiny-sd: no true CFG
    ({"extra_body": {"true_cfg_scale": 0.0}}, "true_cfg_scale"),
    ({"model": "tiny-pixart", "extra_body": {"true_cfg_scale": 2.0}}, "true_cfg_scale"),
    ({"model": "tiny-flux", "extra_body": {"true_cfg_scale": 10.5}}, "true_cfg_scale"),  # > max_guidance_scale
    ({"model": "tiny-flux", "extra_body": {"true_cfg_scale": -1}}, "true_cfg_scale"),
    ({"extra_body": {"guidance_scale": 20.5}}, "guidance_scale"),
    ({"extra_body": {"guidance_scale": -1}}, "guidance_scale"),
    ({"extra_body": {"seed": -1}}, "seed"),
    ({"background": "transparent"}, "background"),
    ({"output_format": "gif"}, "output_format"),
    ({"output_compression": 50}, "output_compression"),  # png
    ({"output_format": "jpeg", "output_compression": 101}, "output_compression"),
    ({"response_format": "base64"}, "response_format"),
    ({"stream": True, "partial_images": 4}, "partial_images"),  # streaming is served, up to 3 previews
    ({"extra_body": {"frame_count": 4}}, "frame_count"),
    ({"extra_body": {"num_inference_step": 4}}, "num_inference_step"),
]


@pytest.mark.parametrize(
    "kwargs,param", BAD_REQUESTS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_REQUESTS)]
)
def test_bad_input_is_400_naming_the_param(
    client: OpenAI, engine: FakeEngine, kwargs: dict, param: str
) -> None:
    calls_before = len(engine.calls)
    kwargs = {"model": "tiny-sd", "prompt": "p", **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**kwargs)
    error = caught.value
    assert error.status_code == 400 and error.param == param and error.type == "invalid_request_error"
    assert_error_body(error.response.content, param=param, type="invalid_request_error")
    assert error.message and len(engine.calls) == calls_before  # rejected before reaching the engine


def bad_request(client: OpenAI, **kwargs: Any) -> dict[str, Any]:
    """The error object of a request that must be a 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**{"prompt": "p", **kwargs})
    return assert_error_body(caught.value.response.content, type="invalid_request_error", code="invalid_value")


@pytest.mark.parametrize(
    "model,scheduler,allowed",
    [
        ("tiny-sd", "flow_euler", "euler, euler_a, ddim, dpm++, pndm, default"),
        ("tiny-pixart", "magic", "euler, euler_a, ddim, dpm++, pndm, default"),
        ("tiny-flux", "dpm++", "flow_euler, flow_dpm++, default"),
    ],
)
def test_scheduler_outside_the_pipeline_list_names_the_allowed_ones(
    client: OpenAI, engine: FakeEngine, model: str, scheduler: str, allowed: str
) -> None:
    calls_before = len(engine.calls)
    error = bad_request(client, model=model, extra_body={"scheduler": scheduler})
    assert error["param"] == "scheduler"
    family = MODEL_FIELDS[model]["family"]
    assert error["message"] == f"scheduler must be one of {allowed} for this {family} pipeline, got {scheduler!r}"
    assert len(engine.calls) == calls_before


@pytest.mark.parametrize("model", sorted(MODEL_FIELDS))
def test_omitted_scheduler_is_the_pipeline_default_and_every_listed_one_is_accepted(
    client: OpenAI, engine: FakeEngine, model: str
) -> None:
    client.images.generate(model=model, prompt="p")
    assert engine.calls[-1][1].scheduler == MODEL_FIELDS[model]["default_scheduler"]
    for scheduler in MODEL_FIELDS[model]["schedulers"]:
        client.images.generate(model=model, prompt="p", extra_body={"scheduler": scheduler})
        assert engine.calls[-1][1].scheduler == scheduler  # "default" too: the core resolves it, not the frontend


def test_max_sequence_length_needs_a_t5_encoder_and_stays_within_its_limit(client: OpenAI) -> None:
    error = bad_request(client, model="tiny-sd", extra_body={"max_sequence_length": 77})
    assert error["param"] == "max_sequence_length"
    assert error["message"] == (
        "max_sequence_length applies to pipelines with a T5 text encoder; this sd pipeline has none"
    )
    error = bad_request(client, model="tiny-pixart", extra_body={"max_sequence_length": 301})
    assert (error["param"], error["message"]) == (
        "max_sequence_length",
        "max_sequence_length must be between 1 and 300, got 301",
    )


def test_max_sequence_length_defaults_and_bounds_on_a_t5_pipeline(client: OpenAI, engine: FakeEngine) -> None:
    client.images.generate(model="tiny-pixart", prompt="p")
    assert engine.calls[-1][1].max_sequence_length == 120  # the pipeline's default_max_sequence_length
    for length in (1, 300):
        client.images.generate(model="tiny-pixart", prompt="p", extra_body={"max_sequence_length": length})
        assert engine.calls[-1][1].max_sequence_length == length
    client.images.generate(model="tiny-sd", prompt="p")
    assert engine.calls[-1][1].max_sequence_length == 0  # no T5: nothing to pad


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-pixart"])
def test_true_cfg_scale_is_refused_where_the_pipeline_has_no_true_cfg(
    client: OpenAI, engine: FakeEngine, model: str
) -> None:
    error = bad_request(client, model=model, extra_body={"true_cfg_scale": 4.0, "negative_prompt": "blur"})
    assert error["param"] == "true_cfg_scale"
    family = MODEL_FIELDS[model]["family"]
    assert error["message"] == (
        f"true_cfg_scale applies to pipelines with true classifier-free guidance (flux); this {family} "
        "pipeline uses guidance_scale"
    )
    # 1.0 (no true CFG) is the neutral value and is accepted everywhere.
    client.images.generate(model=model, prompt="p", extra_body={"true_cfg_scale": 1.0})
    assert engine.calls[-1][1].true_cfg_scale == 1.0


def test_flux_pipeline_takes_true_cfg_scale_and_max_sequence_length(client: OpenAI, engine: FakeEngine) -> None:
    response = client.images.generate(
        model="tiny-flux",
        prompt="a lighthouse",
        n=2,
        size="128x96",
        extra_body={
            "seed": 3,
            "negative_prompt": "fog",
            "true_cfg_scale": 4.0,
            "max_sequence_length": 512,
            "scheduler": "flow_dpm++",
        },
    )
    name, params = engine.calls[-1]
    assert name == "tiny-flux"
    assert params == GenerationParams(
        prompt="a lighthouse",
        negative_prompt="fog",
        num_images=2,
        num_inference_steps=4,
        guidance_scale=3.5,
        seed=3,
        height=96,
        width=128,
        scheduler="flow_dpm++",
        max_sequence_length=512,
        true_cfg_scale=4.0,
    )
    assert response.size == "128x96" and len(response.data) == 2
    assert decode(response.data[0].b64_json).size == (128, 96)
    # Omitted: the pipeline's defaults (flow_euler, 256 T5 tokens, no true CFG).
    client.images.generate(model="tiny-flux", prompt="p")
    params = engine.calls[-1][1]
    assert (params.scheduler, params.max_sequence_length, params.true_cfg_scale) == ("flow_euler", 256, 1.0)
    assert (params.width, params.height, params.guidance_scale) == (64, 64, 3.5)
    # The bounds are inclusive; 0 disables true CFG as 1 does.
    for scale in (0.0, 10.0):
        client.images.generate(model="tiny-flux", prompt="p", extra_body={"true_cfg_scale": scale})
        assert engine.calls[-1][1].true_cfg_scale == scale


def test_unknown_field_message_names_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="tiny-sd", prompt="p", extra_body={"foo": 1})
    assert_error_body(
        caught.value.response.content,
        message="Unrecognized request argument supplied: foo",
        param="foo",
        code="unknown_parameter",
    )


def test_malformed_bodies(base_url: str) -> None:
    url = f"{base_url}/v1/images/generations"
    status, _, body = post_json(url, b"{not json")
    assert status == 400 and assert_error_body(body, code="invalid_json", param=None)["message"].startswith(
        "The request body is not valid JSON"
    )
    status, _, body = post_json(url, {"n": 1})
    assert status == 400
    assert_error_body(
        body,
        param="prompt",
        code="missing_required_parameter",
        message="Missing required parameter: 'prompt'",
    )
    status, _, body = post_json(url, {"prompt": "p", "n": "three"})
    assert status == 400 and assert_error_body(body, param="n")["message"].startswith(
        "n: Input should be a valid integer"
    )


# --- engine failures ------------------------------------------------------------------------------------


def test_unknown_model_is_404(client: OpenAI, engine: FakeEngine) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="no-such-model", prompt="p")
    assert caught.value.status_code == 404
    assert_error_body(
        caught.value.response.content,
        type="invalid_request_error",
        param="model",
        code="model_not_found",
        message="The model 'no-such-model' does not exist or is not a D-Gate pipeline",
    )


def test_engine_down_is_503_with_retry_after(client: OpenAI, base_url: str, engine: FakeEngine) -> None:
    engine.up = False
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="tiny-sd", prompt="p")
    assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "5"
    status, headers, body = post_json(
        f"{base_url}/v1/images/generations", {"model": "tiny-sd", "prompt": "p"}
    )
    assert status == 503 and headers["Retry-After"] == "5"
    message = assert_error_body(body, type="server_error", code="service_unavailable", param=None)["message"]
    assert "failed to connect" in message
    with pytest.raises(openai.InternalServerError):
        client.models.list()
    status, headers, body = http("GET", f"{base_url}/ready")
    assert status == 503 and headers["Retry-After"] == "5"
    assert_error_body(body, code="service_unavailable")
    assert http("GET", f"{base_url}/health")[:3:2] == (200, b'{"status":"ok"}')  # liveness is not readiness
    engine.up = True
    assert http("GET", f"{base_url}/ready")[::2] == (200, b'{"status":"ready"}')


def test_engine_error_is_500_with_its_message(client: OpenAI, engine: FakeEngine) -> None:
    engine.failure = EngineError("denoiser: out of memory allocating 2.0 GiB")
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="tiny-sd", prompt="p")
    assert caught.value.status_code == 500
    assert_error_body(
        caught.value.response.content,
        type="server_error",
        code="engine_error",
        param=None,
        message="denoiser: out of memory allocating 2.0 GiB",
    )


def test_engine_timeout_is_504(client: OpenAI, engine: FakeEngine) -> None:
    engine.failure = EngineTimeout("Triton did not answer in time: Deadline Exceeded")
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="tiny-sd", prompt="p")
    assert caught.value.status_code == 504 and caught.value.code == "timeout"


def test_unexpected_exception_is_generic_500_without_details(client: OpenAI, engine: FakeEngine) -> None:
    engine.failure = RuntimeError("secret internal detail")
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="tiny-sd", prompt="p", extra_headers={"x-request-id": "req-crash-1"})
    error = caught.value
    assert error.status_code == 500 and error.request_id == "req-crash-1"
    assert b"secret" not in error.response.content and b"Traceback" not in error.response.content
    assert_error_body(error.response.content, type="server_error", code="internal_error", param=None)


def test_unknown_route_and_method_are_openai_shaped(base_url: str) -> None:
    status, _, body = http("GET", f"{base_url}/v1/no/such/route")
    assert status == 404
    assert_error_body(body, type="invalid_request_error", code="not_found", message="Not Found")
    status, headers, body = http("DELETE", f"{base_url}/v1/models")
    assert status == 405 and headers["Allow"] == "GET"
    assert_error_body(body, code="method_not_allowed")


# --- observability --------------------------------------------------------------------------------------


def test_request_id_is_honoured_or_generated_and_logged_as_json(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dgate.frontend.access")
    _, headers, _ = http("GET", f"{base_url}/v1/models", headers={"x-request-id": "req-abc.123"})
    assert headers["x-request-id"] == "req-abc.123"
    _, headers, _ = http("GET", f"{base_url}/v1/models", headers={"x-request-id": "bad id\twith spaces"})
    generated = headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    deadline = time.monotonic() + 2
    while (
        not any(getattr(r, "request_id", None) == generated for r in caplog.records)
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)  # the access line is written after the response is sent
    records = {getattr(r, "request_id", None): r for r in caplog.records if r.name == "dgate.frontend.access"}
    line = json.loads(JsonFormatter().format(records["req-abc.123"]))
    assert {k: line[k] for k in ("message", "method", "path", "route", "status")} == {
        "message": "request",
        "method": "GET",
        "path": "/v1/models",
        "route": "/v1/models",
        "status": 200,
    }
    assert isinstance(line["latency_ms"], float) and line["level"] == "INFO"
    assert generated in records


def test_metrics_count_requests_images_and_in_flight(client: OpenAI, base_url: str) -> None:
    def scrape() -> dict[str, float]:
        text = http("GET", f"{base_url}/metrics")[2].decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line[:1] not in "#"
        }

    ok = 'dgate_frontend_requests_total{method="POST",route="/v1/images/generations",status="200"}'
    images = 'dgate_frontend_images_generated_total{model="tiny-sd"}'
    before = scrape()
    client.images.generate(model="tiny-sd", prompt="p", n=4)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="tiny-sd", prompt="p", n=0)
    after = scrape()
    assert after[ok] - before.get(ok, 0) == 1
    assert after[images] - before.get(images, 0) == 4
    bad = 'dgate_frontend_requests_total{method="POST",route="/v1/images/generations",status="400"}'
    assert after[bad] - before.get(bad, 0) == 1
    assert after["dgate_frontend_requests_in_flight"] == 1  # the scrape itself
    count = 'dgate_frontend_request_duration_seconds_count{method="POST",route="/v1/images/generations"}'
    assert after[count] - before[count] == 2


def test_docs_and_openapi(base_url: str) -> None:
    status, _, body = http("GET", f"{base_url}/docs")
    assert status == 200 and b"swagger" in body.lower()
    spec = json.loads(http("GET", f"{base_url}/openapi.json")[2])
    assert {"/v1/images/generations", "/v1/models", "/v1/models/{model_id}", "/health", "/ready"} <= set(
        spec["paths"]
    )


# --- the Triton engine without a Triton ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,message,expected",
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServiceUnavailable),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'tiny-sd' has no available versions",
            ServiceUnavailable,
        ),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", ModelNotFound),
        ("StatusCode.INVALID_ARGUMENT", "Request for unknown model: 'nope' is not found", ModelNotFound),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", EngineTimeout),
        ("StatusCode.INTERNAL", "denoiser failed: bad latent shape", EngineError),
        ("StatusCode.INVALID_ARGUMENT", "in ensemble 'tiny-sd', prompt must be a non-empty string",
         InvalidRequestError),
    ],
)
def test_triton_errors_map_to_typed_errors(status: str, message: str, expected: type) -> None:
    mapped = map_triton_error(InferenceServerException(message, status=status), "nope")
    assert type(mapped) is expected
    if expected is EngineError:  # the backend's text goes to the log, never to the client
        assert mapped.message == failure_message("nope", None)
        assert "bad latent shape" not in mapped.message
    if expected is InvalidRequestError:  # a 400 without Triton's ensemble prefix
        assert mapped.message == "prompt must be a non-empty string"


def test_real_triton_engine_with_triton_down_answers_503() -> None:
    """The real gRPC engine against a closed port: readiness and generation both say 503."""
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    base_url, stop = start_frontend(FrontendSettings(triton_url=dead, metadata_timeout_s=2.0))
    try:
        status, headers, body = http("GET", f"{base_url}/ready")
        assert status == 503 and headers["Retry-After"] == "5"
        status, headers, body = post_json(f"{base_url}/v1/images/generations", {"prompt": "p"})
        assert status == 503 and headers["Retry-After"] == "5"
        assert_error_body(body, code="service_unavailable", type="server_error")
    finally:
        stop()


@pytest.mark.parametrize("limits", [SD_LIMITS, PIXART_LIMITS, FLUX_LIMITS], ids=lambda lim: lim.family)
def test_triton_engine_reads_limits_from_config_parameters(limits: GenerationLimits) -> None:
    class StubClient:
        async def get_model_config(self, name: str, **_: Any) -> dict:
            params = {"dgate_pipeline": "true", **ServedPipeline(limits).to_parameters()}
            if name == "text_encoder":
                params = {}
            return {
                "config": {"name": name, "parameters": {k: {"string_value": v} for k, v in params.items()}}
            }

        async def get_model_repository_index(self, **_: Any) -> dict:
            return {
                "models": [
                    {"name": "tiny-sd", "state": "READY"},
                    {"name": "text_encoder", "state": "READY"},
                    {"name": "old", "state": "UNAVAILABLE"},
                ]
            }

    engine = TritonEngine("unused:1", request_timeout_s=1)
    engine._client = StubClient()  # type: ignore[assignment]

    async def scenario() -> None:
        assert await engine.list_pipelines() == ["tiny-sd"]
        assert await engine.served_pipeline("tiny-sd") == ServedPipeline(limits)
        with pytest.raises(ModelNotFound):
            await engine.served_pipeline("text_encoder")

    asyncio.run(scenario())


def test_triton_engine_sends_every_ensemble_input_with_its_dtype() -> None:
    params = GenerationParams(
        prompt="a lighthouse", negative_prompt="fog", num_images=2, num_inference_steps=4, guidance_scale=3.5,
        seed=3, height=32, width=48, scheduler="flow_euler", max_sequence_length=512, true_cfg_scale=4.0,
        lora='[{"path":"fox.safetensors","scale":0.8,"target":"all"}]',
    )
    sent: dict[str, Any] = {}

    class Result:
        def as_numpy(self, name: str) -> np.ndarray:
            assert name == "images"
            return fake_images(params)

    class StubClient:
        async def get_model_config(self, name: str, **_: Any) -> dict:
            # The blocking design (streams false): unary.
            params = {"dgate_pipeline": "true", **ServedPipeline(FLUX_LIMITS).to_parameters()}
            return {"config": {"name": name, "parameters": {k: {"string_value": v} for k, v in params.items()}}}

        async def infer(self, name: str, inputs: list, **_: Any) -> Result:
            sent.update({i.name(): (i.datatype(), i.shape(), i._raw_content) for i in inputs})
            return Result()

    engine = TritonEngine("unused:1", request_timeout_s=1)
    engine._client = StubClient()  # type: ignore[assignment]
    images = asyncio.run(engine.generate("tiny-flux", params))
    np.testing.assert_array_equal(images, fake_images(params))
    assert set(sent) == {t.name for t in ENSEMBLE_INPUTS}  # an image request: no video inputs
    assert {name: (dtype, shape) for name, (dtype, shape, _) in sent.items()} == {
        "prompt": ("BYTES", [1]),
        "negative_prompt": ("BYTES", [1]),
        "num_images": ("INT32", [1]),
        "num_inference_steps": ("INT32", [1]),
        "guidance_scale": ("FP32", [1]),
        "seed": ("INT64", [1]),
        "height": ("INT32", [1]),
        "width": ("INT32", [1]),
        "scheduler": ("BYTES", [1]),
        "max_sequence_length": ("INT32", [1]),
        "true_cfg_scale": ("FP32", [1]),
        "lora": ("BYTES", [1]),
    }
    assert np.frombuffer(sent["max_sequence_length"][2], np.int32).tolist() == [512]
    assert np.frombuffer(sent["true_cfg_scale"][2], np.float32).tolist() == [4.0]


# --- the url image store -----------------------------------------------------------------------------------


def test_image_store_expiry_and_byte_cap(tmp_path: Path) -> None:
    """Files in the shared assets directory: expiry from the file's mtime (any replica can read it), the
    byte cap over this replica's files, and a second store on the same directory (another replica)."""
    now = [1000.0]
    assets = AssetStore(tmp_path)
    store = ImageStore(assets, ttl_s=10, max_bytes=10, clock=lambda: now[0])
    other_replica = ImageStore(assets, ttl_s=10, max_bytes=10, clock=lambda: now[0])
    first = store.put(b"aaaa", "png")
    second = store.put(b"bbbb", "jpeg")
    assert store.get(first).data == b"aaaa" and store.get(second).content_type == "image/jpeg"
    assert other_replica.get(second).data == b"bbbb"
    assert (tmp_path / f"{first}.png").is_file()
    third = store.put(b"cccc", "webp")  # 12 bytes > cap: the oldest goes
    assert store.get(first) is None and store.get(third).data == b"cccc"
    assert not (tmp_path / f"{first}.png").exists()
    assert store.get("img_../../etc") is None and store.get("video_0123") is None
    now[0] = 1009.9
    assert store.remaining_s(store.get(second)) == pytest.approx(0.1)
    now[0] = 1010.0
    assert other_replica.get(second) is None and not (tmp_path / f"{second}.jpeg").exists()
    assert other_replica.collect() == 1 and sorted(tmp_path.iterdir()) == []  # the third, expired


def test_curl_d_json_bodies_are_read_as_json(base_url: str) -> None:
    """`curl URL -d '{...}'` labels JSON as a urlencoded form (the README's LoRA examples rely on it)."""
    status, _, body = http("POST", f"{base_url}/v1/images/generations",
                           json.dumps({"model": "tiny-sd", "prompt": "a fox", "size": "64x64"}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    status, _, body = http("POST", f"{base_url}/v1/images/generations", b"prompt=a+fox",
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
