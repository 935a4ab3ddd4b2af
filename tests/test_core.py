"""The framework-free core on the tiny pipelines: spec, limits, schedulers, tokenization, loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from dgate.core.denoise import denoise
from dgate.core.errors import InvalidRequestError
from dgate.core.images import to_uint8_images
from dgate.core.limits import SCHEDULER_NAMES, GenerationLimits
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory, build_scheduler
from dgate.core.tokenization import PromptTokenizer
from dgate.export.wrappers import component_module


@pytest.fixture(scope="module")
def pipes(tiny_models: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    return {name: DiffusionPipeline.from_pretrained(str(path)) for name, path in tiny_models.items()}


def test_spec_reads_the_pipeline_configs(pipes: dict) -> None:
    sd = PipelineSpec.from_pipeline(pipes["tiny-sd"], "tiny-sd")
    assert (sd.family, sd.denoiser_component, sd.uses_attention_mask) == ("unet", "unet", False)
    assert (sd.latent_channels, sd.denoiser_out_channels, sd.vae_scale_factor) == (4, 4, 2)
    assert sd.text_max_length == 77 and sd.text_hidden_size == 32
    assert sd.vae_scaling_factor == pipes["tiny-sd"].vae.config.scaling_factor
    assert (sd.limits.default_width, sd.limits.max_width, sd.limits.size_multiple) == (64, 128, 8)
    assert sd.limits.default_steps == 50 and sd.limits.default_guidance_scale == 7.5  # diffusers' own defaults

    pixart = PipelineSpec.from_pipeline(pipes["tiny-pixart"], "tiny-pixart")
    assert (pixart.family, pixart.denoiser_component, pixart.uses_attention_mask) == ("dit", "transformer", True)
    assert pixart.denoiser_out_channels == 8  # learned sigma
    assert pixart.text_max_length == 300  # PixArtSigmaPipeline's max_sequence_length default
    assert [t.name for t in pixart.denoiser_model_inputs] == [
        "sample", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    assert PipelineSpec.from_json(pixart.to_json()) == pixart


def test_unsupported_pipeline_is_refused() -> None:
    class NotAPipeline:
        pass

    with pytest.raises(ValueError, match="unsupported pipeline NotAPipeline"):
        PipelineSpec.from_pipeline(NotAPipeline(), "x")


LIMITS = GenerationLimits(
    default_width=64, default_height=64, min_size=16, max_width=128, max_height=128, size_multiple=8,
    default_steps=50, max_steps=100, max_images=10, default_guidance_scale=7.5, max_guidance_scale=50.0,
    default_scheduler="default",
)
GOOD = {"prompt": "a fox", "num_images": 1, "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 1,
        "width": 64, "height": 64, "scheduler": "euler"}


def test_limits_round_trip_through_config_parameters() -> None:
    parameters = LIMITS.to_parameters()
    assert all(isinstance(value, str) for value in parameters.values())
    assert GenerationLimits.from_parameters(parameters) == LIMITS
    LIMITS.validate(**GOOD)


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("prompt", " ", "prompt"), ("num_images", 11, "n"), ("num_inference_steps", 0, "num_inference_steps"),
     ("num_inference_steps", 101, "num_inference_steps"), ("guidance_scale", 51.0, "guidance_scale"),
     ("seed", -1, "seed"), ("width", 60, "size"), ("height", 136, "size"), ("height", 8, "size"),
     ("scheduler", "lms", "scheduler")],
)
def test_limits_name_the_offending_param(field: str, value: object, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        LIMITS.validate(**(GOOD | {field: value}))
    assert caught.value.param == param
    assert str(value).strip() in caught.value.message or field == "prompt"


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_builds_from_the_pipeline_config(pipes: dict, name: str) -> None:
    base = dict(pipes["tiny-sd"].scheduler.config) | {"_class_name": "EulerDiscreteScheduler"}
    scheduler = build_scheduler(name, base)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) >= 4


def test_scheduler_factory_hands_out_independent_fresh_schedulers(pipes: dict) -> None:
    factory = SchedulerFactory(dict(pipes["tiny-sd"].scheduler.config))
    first, second = factory("dpm++"), factory("dpm++")
    assert first is not second and type(first).__name__ == "DPMSolverMultistepScheduler"
    first.set_timesteps(4)
    assert second.timesteps is None or len(second.timesteps) != 4  # the template was not touched
    np.testing.assert_array_equal(factory("dpm++").config["beta_schedule"], first.config["beta_schedule"])
    with pytest.raises(InvalidRequestError):
        factory("lms")


def test_unknown_scheduler_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="scheduler must be one of"):
        build_scheduler("lms", {})


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-pixart"])
def test_tokenizer_matches_the_pipeline(tiny_models: dict, pipes: dict, name: str) -> None:
    spec = PipelineSpec.from_pipeline(pipes[name], name)
    tokenizer = PromptTokenizer.from_directory(tiny_models[name] / "tokenizer", spec.text_max_length)
    ids, mask = tokenizer("a red fox, très rapide!", "blurry")
    assert ids.shape == mask.shape == (2, spec.text_max_length) and ids.dtype == np.int64
    expected = pipes[name].tokenizer("a red fox, très rapide!", padding="max_length",
                                     max_length=spec.text_max_length, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids[1], expected["input_ids"][0])
    assert mask[1].sum() < spec.text_max_length  # padding is masked


@pytest.mark.parametrize(("name", "scheduler"), [("tiny-sd", "euler_a"), ("tiny-pixart", "dpm++")])
def test_core_loop_with_torch_models_equals_diffusers(pipes: dict, name: str, scheduler: str) -> None:
    """The loop Triton runs, with the PyTorch modules as `predict`, reproduces diffusers bit for bit."""
    pipe = pipes[name]
    spec = PipelineSpec.from_pipeline(pipe, name)
    params = DenoiseParams(num_images=2, num_inference_steps=3, guidance_scale=4.0, seed=11, height=48, width=64,
                           scheduler=scheduler)
    ids, mask = PromptTokenizer(pipe.tokenizer, spec.text_max_length)("a lighthouse at dusk", "")
    text = component_module(pipe, spec, "text_encoder")
    model = component_module(pipe, spec, spec.denoiser_component)
    decoder = component_module(pipe, spec, "vae_decoder")
    with torch.inference_mode():
        args = (torch.from_numpy(ids), torch.from_numpy(mask)) if spec.uses_attention_mask else (torch.from_numpy(ids),)
        embeds = text(*args).numpy()

        def predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return model(*(torch.from_numpy(inputs[t.name]) for t in spec.denoiser_model_inputs)).numpy()

        latents = denoise(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), embeds, mask, predict)
        served = to_uint8_images(decoder(torch.from_numpy(latents)).numpy())

    pipe.scheduler = build_scheduler(scheduler, dict(pipe.scheduler.config))
    extra = {"use_resolution_binning": False, "clean_caption": False} if spec.family == "dit" else {}
    expected = pipe("a lighthouse at dusk", negative_prompt="", num_images_per_prompt=2, num_inference_steps=3,
                    guidance_scale=4.0, height=48, width=64, generator=torch.Generator().manual_seed(11),
                    output_type="np", **extra).images
    np.testing.assert_array_equal(served, (expected * 255).round().astype(np.uint8))


def test_cancellation_stops_the_loop(pipes: dict) -> None:
    from dgate.core.denoise import DenoiseCancelled

    spec = PipelineSpec.from_pipeline(pipes["tiny-sd"], "tiny-sd")
    calls = []

    def predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(1)
        return np.zeros_like(inputs["sample"])

    params = DenoiseParams(1, 10, 7.5, 0, 64, 64, "euler")
    embeds = np.zeros((2, 77, 32), np.float32)
    with pytest.raises(DenoiseCancelled):
        denoise(spec, params, SchedulerFactory(dict(pipes["tiny-sd"].scheduler.config)), embeds, None, predict,
                is_cancelled=lambda: len(calls) >= 2)
    assert len(calls) == 2
