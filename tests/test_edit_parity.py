"""Image edits (img2img, inpainting) through the core against diffusers' own img2img/inpaint pipelines.

`torch_loop_edit` runs the request as Triton does (`image_program`: VAE encoder, the loop, VAE
decoder) on the exported PyTorch wrappers; `diffusers_edit` builds the family's img2img or inpaint
pipeline from the text-to-image pipeline's components and calls it with the same values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

from dgate.core.errors import InvalidRequestError
from dgate.core.families import family_of, spec_from_pipeline
from dgate.core.pipeline_spec import PipelineSpec
from dgate.reference import diffusers_edit, torch_loop_edit, torch_loop_images
from dgate.tiny import build_tiny_pipeline

EDIT_FAMILIES = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux")
NO_EDIT_FAMILIES = ("tiny-pixart", "tiny-animatediff", "tiny-svd")
HEIGHT, WIDTH = 48, 64  # not square, so that a swapped axis shows


@pytest.fixture(scope="module")
def pipes(tiny_models: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    return {name: DiffusionPipeline.from_pretrained(str(tiny_models[name])) for name in EDIT_FAMILIES}


@pytest.fixture(scope="module")
def specs(pipes: dict) -> dict[str, PipelineSpec]:
    return {name: spec_from_pipeline(pipe, name) for name, pipe in pipes.items()}


def _image() -> np.ndarray:
    """A deterministic picture with structure: colour gradients, a disc and a rectangle."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.stack([x / WIDTH * 255, y / HEIGHT * 255, (x + y) / (HEIGHT + WIDTH) * 255], axis=-1)
    image[(x - WIDTH * 0.3) ** 2 + (y - HEIGHT * 0.35) ** 2 < (HEIGHT * 0.2) ** 2] = (230, 40, 40)
    image[int(HEIGHT * 0.6) : int(HEIGHT * 0.9), int(WIDTH * 0.55) : int(WIDTH * 0.9)] = (20, 60, 200)
    return image.round().astype(np.uint8)


def _mask() -> np.ndarray:
    """Repaint a rectangle in the middle (255), keep the rest (0)."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[HEIGHT // 4 : 3 * HEIGHT // 4, WIDTH // 4 : 3 * WIDTH // 4] = 255
    return mask


def _values(**overrides: object) -> dict:
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "", "num_images": 2, "num_inference_steps": 4,
            "guidance_scale": 4.0, "seed": 11, "height": HEIGHT, "width": WIDTH, "scheduler": "default",
            "max_sequence_length": 0, "true_cfg_scale": 1.0, "strength": 0.6} | overrides


# (pipeline, inpaint, overrides). 4 steps: strength 0.6 runs 2 steps on SD/SDXL (int(4 * 0.6)) but 3 on
# SD3/Flux (their get_timesteps truncates 4 - 2.4 instead); 0.7 likewise 2 and 3. euler_a draws from the
# generator in every step, after the edit's draws.
CASES = [
    ("tiny-sd", False, {}),
    ("tiny-sd", False, {"strength": 1.0, "scheduler": "euler_a"}),
    ("tiny-sd", True, {"strength": 1.0}),
    ("tiny-sd", True, {"strength": 0.7, "scheduler": "euler_a", "negative_prompt": "blurry"}),
    ("tiny-sdxl", False, {"scheduler": "dpm++"}),
    ("tiny-sdxl", True, {"strength": 1.0, "scheduler": "ddim"}),
    ("tiny-sdxl", True, {"strength": 0.7, "negative_prompt": "blurry"}),
    ("tiny-sd3", False, {}),
    ("tiny-sd3", False, {"strength": 1.0}),
    ("tiny-sd3", True, {"strength": 1.0}),
    ("tiny-sd3", True, {"strength": 0.7}),
    ("tiny-flux", False, {}),
    ("tiny-flux", True, {"strength": 1.0}),
    ("tiny-flux", True, {"strength": 0.7}),
]


@pytest.mark.parametrize(("name", "inpaint", "overrides"), CASES)
def test_edit_with_torch_models_equals_diffusers(pipes: dict, specs: dict, name: str, inpaint: bool,
                                                 overrides: dict) -> None:
    """Served (FP32) against the pipeline: measured max difference 1/255 (rounding of the VAE
    encoder's batch and the sample's `(mean - shift) * scale + std * scale * eps` order); bound 2/255."""
    values = _values(**overrides)
    image, mask = _image(), _mask() if inpaint else None
    expected = diffusers_edit(pipes[name], values, image, mask)
    served = torch_loop_edit(pipes[name], specs[name], values, image, mask)
    assert served.shape == expected.shape == (2, HEIGHT, WIDTH, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 2
    assert expected.std() > 5
    # The edit did something: the repainted area (all of it for img2img) is not the input image.
    area = np.ones((HEIGHT, WIDTH), dtype=bool) if mask is None else mask == 255
    assert np.abs(expected[:, area].astype(int) - image[area].astype(int)).mean() > 5


def test_flow_dpm_edit_noises_with_add_noise(pipes: dict, specs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPM-Solver over flow sigmas has no `scale_noise` (SD3's img2img pipeline fails with it); D-Gate
    noises with its `add_noise`, the same interpolation. The pipeline, given that as `scale_noise`,
    agrees with the served image."""
    values = _values(scheduler="flow_dpm++")
    served = torch_loop_edit(pipes["tiny-sd3"], specs["tiny-sd3"], values, _image())
    monkeypatch.setattr(DPMSolverMultistepScheduler, "scale_noise",
                        lambda self, sample, timestep, noise: self.add_noise(sample, noise, timestep), raising=False)
    expected = diffusers_edit(pipes["tiny-sd3"], values, _image())
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 2
    assert expected.std() > 5


def test_only_families_with_diffusers_edit_pipelines_offer_edits(tiny_models: dict[str, Path], specs: dict) -> None:
    for name in EDIT_FAMILIES:
        assert specs[name].capabilities.edits and family_of(specs[name]).supports_edits
        assert not specs[name].capabilities.inpaint_model  # 4/16-channel denoisers: inpainting by latent blending
    for name in NO_EDIT_FAMILIES:
        spec = spec_from_pipeline(DiffusionPipeline.from_pretrained(str(tiny_models[name])), name)
        assert not spec.capabilities.edits and not family_of(spec).supports_edits, name


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusionPipeline, PipelineSpec]:
    pipe = DiffusionPipeline.from_pretrained(str(build_tiny_pipeline("tiny-sd-inpaint", tmp_path_factory.mktemp("m"))))
    return pipe, spec_from_pipeline(pipe, "tiny-sd-inpaint")


def test_inpainting_model_spec(inpaint_model: tuple) -> None:
    """A 9-channel UNet: the latents stay the VAE's 4 channels, the denoiser's sample takes 9."""
    pipe, spec = inpaint_model
    assert pipe.unet.config.in_channels == 9 and spec.family == "sd-inpaint"
    assert (spec.latent_channels, spec.denoiser_out_channels) == (4, 4)
    assert spec.capabilities.inpaint_model and spec.capabilities.edits
    sample = family_of(spec).denoiser_inputs(spec)[0]
    assert (sample.name, sample.dims[0]) == ("sample", 9)
    assert PipelineSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("overrides", [{"strength": 1.0}, {"strength": 0.7, "scheduler": "euler_a"},
                                       {"strength": 0.6, "scheduler": "ddim", "negative_prompt": "blurry"}])
def test_inpainting_model_equals_diffusers(inpaint_model: tuple, overrides: dict) -> None:
    """StableDiffusionInpaintPipeline with its 9-channel UNet: the mask and the masked image's latents
    are input channels every step, no blend, and at strength 1 the image's latents are never drawn.
    Measured max difference 1/255; bound 2/255."""
    pipe, spec = inpaint_model
    values = _values(**overrides)
    expected = diffusers_edit(pipe, values, _image(), _mask())
    served = torch_loop_edit(pipe, spec, values, _image(), _mask())
    assert served.shape == expected.shape == (2, HEIGHT, WIDTH, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 2
    assert expected.std() > 5


def test_inpainting_model_needs_an_image_and_a_mask(inpaint_model: tuple) -> None:
    pipe, spec = inpaint_model
    with pytest.raises(InvalidRequestError) as text_only:
        torch_loop_images(pipe, spec, _values())
    assert text_only.value.param == "image"
    with pytest.raises(InvalidRequestError) as no_mask:
        torch_loop_edit(pipe, spec, _values(), _image())
    assert no_mask.value.param == "mask"
