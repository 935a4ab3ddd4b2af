"""`/v1/images/edits` and `/v1/images/variations` against a fake engine, with the official `openai`
client's multipart (one `image`, repeated `image[]`, `mask`) and raw bodies where the client cannot
be made to send them."""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import openai
import pytest
from frontend_fixtures import ERROR_KEYS, assert_error_body, fake_frontend
from openai import OpenAI
from PIL import Image
from test_frontend_unit import SD_LIMITS
from test_streaming_unit import SteppingEngine, decode, png

from dgate.core.limits import GenerationLimits
from dgate.frontend.edit_uploads import fit_size
from dgate.frontend.schemas import VARIATION_PROMPT
from dgate.frontend.settings import FrontendSettings

MAX_UPLOAD_MB = 0.25
MAX_PIXELS = 500_000


served, engine, client = fake_frontend(SteppingEngine)


@pytest.fixture(scope="module")
def frontend_settings() -> FrontendSettings:
    return FrontendSettings(video_workers=0, max_upload_mb=MAX_UPLOAD_MB, max_input_pixels=MAX_PIXELS)


def solid(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    return png(np.full((height, width, 3), color, np.uint8))


def mask_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    """Left half transparent (repaint), right half opaque (keep)."""
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 2] = 0
    rgba = np.dstack([np.zeros((height, width, 3), np.uint8), alpha])
    return png(Image.fromarray(rgba, "RGBA").convert(mode))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, with no pixel data (a decompression bomb's head)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(
        ">I", zlib.crc32(b"IHDR" + ihdr))


# --- edits --------------------------------------------------------------------------------------------


def test_edit_one_image_at_its_own_size_snapped_to_the_pipeline(client: OpenAI, engine: SteppingEngine) -> None:
    image = np.random.default_rng(0).integers(0, 256, (85, 100, 3), np.uint8)
    result = client.images.edit(image=("in.png", png(image)), prompt="a watercolour", model="tiny-sd", n=2,
                                input_fidelity="high", extra_body={"seed": 11})
    assert (result.size, result.seed, len(result.data)) == ("96x80", 11, 2)  # 100x85 snapped down to 16s
    (call,) = engine.calls
    assert call.edit is not None and call.edit.mask is None
    assert (call.params.prompt, call.params.strength, call.params.num_images) == ("a watercolour", 0.8, 2)
    expected = np.asarray(Image.fromarray(image).resize((96, 80), Image.Resampling.LANCZOS))
    assert np.array_equal(call.edit.image, expected)  # Lanczos to the output size
    for item in result.data:
        assert item.b64_json is not None and np.array_equal(np.asarray(decode(item.b64_json)), expected)


def test_several_images_are_edited_separately_and_listed_in_order(client: OpenAI, engine: SteppingEngine) -> None:
    colors = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    result = client.images.edit(image=[(f"{i}.png", solid(80, 60, c)) for i, c in enumerate(colors)],
                                prompt="at night", model="tiny-sd", size="64x32", n=2, output_format="png")
    assert len(engine.calls) == 3 and all(call.params.num_images == 2 for call in engine.calls)
    assert {call.params.seed for call in engine.calls} == {result.seed}
    seen = [tuple(np.asarray(decode(item.b64_json or ""))[0, 0]) for item in result.data]
    assert seen == [colors[0]] * 2 + [colors[1]] * 2 + [colors[2]] * 2
    assert result.size == "64x32"


def test_one_image_as_a_list_is_sent_as_image_brackets(client: OpenAI, engine: SteppingEngine) -> None:
    result = client.images.edit(image=[("a.png", solid(64, 48, (1, 2, 3)))], prompt="p", model="tiny-sd")
    assert len(result.data) == 1 and len(engine.calls) == 1


def test_mask_transparent_pixels_are_repainted(client: OpenAI, engine: SteppingEngine) -> None:
    client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), mask=("mask.png", mask_png(64, 48)),
                       prompt="a red door", model="tiny-sd", size="32x32")
    (call,) = engine.calls
    assert call.edit is not None and call.edit.mask is not None and call.params.strength == 1.0
    mask = call.edit.mask
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()  # resized with nearest: still binary


def test_mask_with_palette_transparency_is_accepted(client: OpenAI, engine: SteppingEngine) -> None:
    client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), mask=("mask.png", mask_png(64, 48, "P")),
                       prompt="p", model="tiny-sd")
    edit = engine.calls[0].edit
    mask = edit.mask if edit else None
    assert mask is not None and (mask[:, :32] == 255).all() and (mask[:, 32:] == 0).all()


def test_strength_steps_and_extensions_reach_the_engine(client: OpenAI, engine: SteppingEngine) -> None:
    client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), prompt="p", model="tiny-sd", extra_body={
        "strength": 0.5, "num_inference_steps": 10, "guidance_scale": 3.0, "negative_prompt": "blur",
        "scheduler": "ddim", "seed": 5})
    params = engine.calls[0].params
    assert (params.strength, params.num_inference_steps, params.guidance_scale, params.negative_prompt,
            params.scheduler, params.seed) == (0.5, 10, 3.0, "blur", "ddim", 5)


def test_edit_answers_urls_too(client: OpenAI, served: tuple[str, SteppingEngine], engine: SteppingEngine) -> None:
    result = client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), prompt="p", model="tiny-sd",
                                response_format="url")
    assert result.data[0].url is not None
    with urllib.request.urlopen(result.data[0].url, timeout=10) as answer:
        assert answer.headers["content-type"] == "image/png"


def test_output_size_fits_the_pipeline() -> None:
    limits: GenerationLimits = SD_LIMITS  # 32..256, multiples of 16
    assert fit_size((100, 85), limits) == (96, 80)
    assert fit_size((1024, 512), limits) == (256, 128)  # scaled down, aspect kept
    assert fit_size((20, 1000), limits) == (32, 256)  # clamped to min_size
    assert fit_size((64, 48), limits) == (64, 48)


# --- variations -------------------------------------------------------------------------------------


def test_variation_is_an_edit_with_the_default_prompt(client: OpenAI, engine: SteppingEngine) -> None:
    result = client.images.create_variation(image=("in.png", solid(64, 48, (5, 6, 7))), model="tiny-sd", n=2,
                                            size="32x32", response_format="b64_json", user="u-7")
    assert len(result.data) == 2 and result.size == "32x32" and result.safety_identifier == "u-7"
    (call,) = engine.calls
    assert call.params.prompt == VARIATION_PROMPT and call.params.strength == 0.8 and call.edit is not None
    assert call.edit.mask is None


def test_variation_takes_a_prompt_and_strength(client: OpenAI, engine: SteppingEngine) -> None:
    client.images.create_variation(image=("in.png", solid(64, 48, (5, 6, 7))), model="tiny-sd",
                                   extra_body={"prompt": "in autumn", "strength": 0.3})
    assert (engine.calls[0].params.prompt, engine.calls[0].params.strength) == ("in autumn", 0.3)


# --- refusals -----------------------------------------------------------------------------------------

IMAGE = ("in.png", solid(64, 48, (9, 9, 9)))


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"image": ("a.txt", b"not an image", "text/plain")}, "image", "invalid_value"),
    ({"image": ("a.png", png(np.zeros((48, 64, 3), np.uint8))[:60])}, "image", "invalid_value"),  # truncated
    ({"image": [IMAGE, ("b.png", b"nope")]}, "image", "invalid_value"),  # the second of two
    ({"image": ("big.png", b"\x89PNG" + bytes(300_000))}, "image", "file_too_large"),  # > 0.25 MB
    ({"image": ("bomb.png", png_header_only(1000, 1000))}, "image", "invalid_value"),  # > max_input_pixels
    ({"image": ("bomb.png", png_header_only(100_000, 100_000))}, "image", "invalid_value"),  # > Pillow's limit
    ({"image": [IMAGE] * 17}, "image", "invalid_value"),
    ({"image": []}, "image", "missing_required_parameter"),
    ({"mask": ("m.png", mask_png(32, 32))}, "mask", "invalid_value"),  # another size than the image
    ({"mask": ("m.png", mask_png(64, 48, "RGB"))}, "mask", "invalid_value"),  # no alpha channel
    ({"mask": ("m.png", png_header_only(1000, 1000))}, "mask", "invalid_value"),
    ({"model": "tiny-blocking"}, "model", "invalid_value"),  # no edits
    ({"model": "tiny-video"}, "model", "invalid_value"),
    ({"model": "tiny-blocking", "stream": True, "partial_images": 1}, "model", "invalid_value"),
    ({"size": "60x48"}, "size", "invalid_value"),
    ({"size": "1024x1024"}, "size", "invalid_value"),
    ({"prompt": "  "}, "prompt", "invalid_value"),
    ({"input_fidelity": "medium"}, "input_fidelity", "invalid_value"),
    ({"output_format": "gif"}, "output_format", "invalid_value"),
    ({"extra_body": {"strength": 0}}, "strength", "invalid_value"),
    ({"extra_body": {"strength": 1.5}}, "strength", "invalid_value"),
    ({"extra_body": {"strength": 0.05, "num_inference_steps": 10}}, "strength", "invalid_value"),  # 0 steps
    ({"extra_body": {"frame_count": 4}}, "frame_count", "unknown_parameter"),
    ({"partial_images": 2}, "partial_images", "invalid_value"),  # without stream
])
def test_bad_edits_are_400_in_openai_shape(client: OpenAI, engine: SteppingEngine, kwargs: dict[str, Any],
                                            param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(**({"image": IMAGE, "prompt": "a fox", "model": "tiny-sd"} | kwargs))
    body = refused.value.body
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert (refused.value.param, refused.value.code, body["type"]) == (param, code, "invalid_request_error"), body
    assert not engine.calls


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"image": ("a.txt", b"not an image")}, "image", "invalid_value"),
    ({"extra_body": {"quality": "high"}}, "quality", "unknown_parameter"),  # not a variation field
    ({"extra_body": {"prompt": ""}}, "prompt", "invalid_value"),
])
def test_bad_variations_are_400(client: OpenAI, engine: SteppingEngine, kwargs: dict[str, Any], param: str,
                                code: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(**({"image": IMAGE, "model": "tiny-sd"} | kwargs))
    assert (refused.value.param, refused.value.code) == (param, code)
    assert not engine.calls


def multipart(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    """(body, content type) from (name, value, filename or None) parts."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return body + b"--b--\r\n", "multipart/form-data; boundary=b"


def post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_malformed_edit_bodies_are_400(served: tuple[str, SteppingEngine], engine: SteppingEngine) -> None:
    url = f"{served[0]}/v1/images/edits"
    image = solid(64, 48, (1, 1, 1))
    cases = [
        (multipart(("prompt", b"p", None), ("image", b"https://e.com/a.png", None)), "image", "invalid_value"),
        (multipart(("prompt", b"p", None), ("image", image, "a.png"), ("mask", image, "m.png"),
                   ("mask", image, "n.png")), "mask", "invalid_value"),  # two masks
        (multipart(("prompt", b"p", None), ("image", image, "a.png"), ("poster", image, "p.png")), "poster",
         "unknown_parameter"),
        (multipart(("prompt", b"p", None), ("prompt", b"q", None), ("image", image, "a.png")), "prompt",
         "invalid_value"),
        (multipart(("image", image, "a.png")), "prompt", "missing_required_parameter"),
        # JSON (vLLM-Omni/SGLang clients' `json=`) is read; an image in it can only be a reference: named.
        ((b'{"prompt": "p", "image": "https://e.com/a.png"}', "application/json"), "image", "invalid_value"),
        ((b"prompt=p", "text/plain"), None, "unsupported_content_type"),
    ]
    for (body, content_type), param, code in cases:
        status, answer = post(url, body, content_type)
        assert status == 400, answer
        assert_error_body(answer, param=param, code=code)
    assert not engine.calls


def test_lora_lists_arrive_as_repeated_bracket_fields(served: tuple[str, SteppingEngine],
                                                     engine: SteppingEngine) -> None:
    body, content_type = multipart(("prompt", b"p", None), ("model", b"tiny-sd", None),
                                   ("image", solid(64, 48, (1, 1, 1)), "a.png"), ("lora[]", b"nope-a", None),
                                   ("lora[]", b"nope-b", None))
    status, answer = post(f"{served[0]}/v1/images/edits", body, content_type)
    # Parsed as a list of two adapters; neither is in the (empty) adapters directory.
    assert status == 400 and b"nope-a" in answer
    assert_error_body(answer, param="lora")


def test_a_dedicated_inpainting_model_takes_masked_edits_only(client: OpenAI, engine: SteppingEngine) -> None:
    """A 9-channel inpainting UNet has no text-to-image or img2img: those are a 400 before any work."""
    sd = engine.pipelines["tiny-sd"]
    engine.pipelines["tiny-inpaint"] = replace(sd, capabilities=replace(sd.capabilities, inpaint_model=True))
    try:
        with pytest.raises(openai.BadRequestError) as error:
            client.images.generate(model="tiny-inpaint", prompt="a fox", size="64x48")
        assert error.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as error:
            client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), prompt="a fox", model="tiny-inpaint")
        assert error.value.body["param"] == "mask"  # type: ignore[index]
        assert not engine.calls
        result = client.images.edit(image=("in.png", solid(64, 48, (9, 9, 9))), mask=("m.png", mask_png(64, 48)),
                                    prompt="a fox", model="tiny-inpaint")
        assert len(result.data) == 1 and engine.calls
    finally:
        del engine.pipelines["tiny-inpaint"]
