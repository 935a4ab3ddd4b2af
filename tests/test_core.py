"""The framework-free core on the tiny pipelines: family adapters, spec, limits, schedulers, tokenization, loop."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline

from dgate.core.capabilities import Capabilities
from dgate.core.denoise import DenoiseCancelled, denoise
from dgate.core.errors import InvalidRequestError
from dgate.core.families import FAMILIES, family_of, spec_from_pipeline
from dgate.core.limits import GenerationLimits
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import FORMAT_VERSION, PipelineSpec, TextEncoderSpec
from dgate.core.schedulers import SchedulerFactory, build_scheduler, scheduler_names
from dgate.core.served_pipeline import ServedPipeline
from dgate.core.tokenization import PromptTokenizer, save_prompt_tokenizer
from dgate.reference import diffusers_images, diffusers_video, torch_loop_images, torch_loop_video, torch_text_outputs

FAMILY_OF_TINY = {"tiny-sd": "sd", "tiny-pixart": "pixart", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3",
                  "tiny-flux": "flux", "tiny-animatediff": "animatediff", "tiny-svd": "svd"}


@pytest.fixture(scope="module")
def pipes(tiny_models: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    return {name: DiffusionPipeline.from_pretrained(str(path)) for name, path in tiny_models.items()}


@pytest.fixture(scope="module")
def specs(pipes: dict) -> dict[str, PipelineSpec]:
    return {name: spec_from_pipeline(pipe, name) for name, pipe in pipes.items()}


def test_each_pipeline_class_gets_its_family_from_its_own_config(specs: dict) -> None:
    assert {name: spec.family for name, spec in specs.items()} == FAMILY_OF_TINY
    for spec in specs.values():
        assert PipelineSpec.from_json(spec.to_json()) == spec
        assert spec.format_version == FORMAT_VERSION


def test_spec_reads_the_pipeline_configs(specs: dict, pipes: dict) -> None:
    sd = specs["tiny-sd"]
    assert (sd.denoiser_component, sd.latent_channels, sd.denoiser_out_channels, sd.vae_scale_factor) == (
        "unet", 4, 4, 2)
    assert [(e.component, e.max_length, e.hidden_size, e.pooled_size) for e in sd.text_encoders] == [
        ("text_encoder", 77, 32, 0)]
    assert (sd.limits.default_width, sd.limits.max_width, sd.limits.size_multiple) == (64, 128, 8)
    assert sd.limits.default_steps == 50 and sd.limits.default_guidance_scale == 7.5  # diffusers' own defaults
    assert sd.limits.default_scheduler == "euler"  # the pipeline's own EulerDiscreteScheduler, by name

    pixart = specs["tiny-pixart"]
    assert pixart.denoiser_out_channels == 8  # learned sigma
    assert pixart.limits.default_max_sequence_length == 300  # PixArtSigmaPipeline's max_sequence_length
    assert pixart.limits.default_scheduler == "dpm++"
    assert [t.name for t in family_of(pixart).denoiser_inputs(pixart)] == [
        "sample", "timestep", "encoder_hidden_states", "encoder_attention_mask"]

    sdxl = specs["tiny-sdxl"]
    assert [(e.hidden_layer, e.pooled_size) for e in sdxl.text_encoders] == [(-2, 0), (-2, 32)]
    assert sdxl.force_zeros_for_empty_prompt
    inputs = {t.name: t.dims for t in family_of(sdxl).denoiser_inputs(sdxl)}
    assert inputs["encoder_hidden_states"] == (77, pipes["tiny-sdxl"].unet.config.cross_attention_dim)
    assert inputs["time_ids"] == (6,) and inputs["text_embeds"] == (32,)

    sd3 = specs["tiny-sd3"]
    assert [e.component for e in sd3.text_encoders] == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    assert sd3.limits.schedulers == ("flow_euler", "flow_dpm++", "default")
    assert sd3.limits.default_scheduler == "flow_euler" and sd3.limits.default_max_sequence_length == 256
    assert sd3.limits.max_sequence_length == 512  # a longer T5 prompt than the default may be asked for

    flux = specs["tiny-flux"]
    assert flux.guidance_embeds and flux.limits.true_cfg and flux.latent_channels == 16
    assert flux.limits.size_multiple == 8 and flux.limits.default_max_sequence_length == 512
    assert "guidance" in {t.name for t in family_of(flux).denoiser_inputs(flux)}


def test_precision_policy_keeps_t5_and_upcast_vaes_in_fp32(pipes: dict) -> None:
    sdxl = spec_from_pipeline(pipes["tiny-sdxl"], "x", precision="fp16")
    assert sdxl.precision("unet") == "fp16" and sdxl.precision("text_encoder_2") == "fp16"
    assert sdxl.precision("vae_decoder") == ("fp32" if pipes["tiny-sdxl"].vae.config.force_upcast else "fp16")
    flux = spec_from_pipeline(pipes["tiny-flux"], "x", precision="fp16")
    assert flux.precision("text_encoder_2") == "fp32" and flux.precision("text_encoder") == "fp16"
    assert spec_from_pipeline(pipes["tiny-flux"], "x").precision("transformer") == "fp32"


def test_version_1_pipeline_json_still_loads() -> None:
    v1 = {"name": "old", "pipeline_class": "StableDiffusionPipeline", "family": "unet", "denoiser_component": "unet",
          "latent_channels": 4, "denoiser_out_channels": 4, "vae_scale_factor": 8, "vae_scaling_factor": 0.18215,
          "vae_shift_factor": None, "text_max_length": 77, "text_hidden_size": 768, "uses_attention_mask": False,
          "limits": {"default_width": 512, "default_height": 512, "min_size": 128, "max_width": 1024,
                     "max_height": 1024, "size_multiple": 64, "default_steps": 50, "max_steps": 100,
                     "max_images": 10, "default_guidance_scale": 7.5, "max_guidance_scale": 50.0,
                     "default_scheduler": "default"}}
    spec = PipelineSpec.from_json(json.dumps(v1))
    assert spec.family == "sd" and spec.text_encoders[0].hidden_size == 768
    assert spec.limits.schedulers[-1] == "default" and spec.format_version == FORMAT_VERSION
    with pytest.raises(ValueError, match="upgrade dgate"):
        PipelineSpec.from_json(json.dumps({"format_version": FORMAT_VERSION + 1}))


def test_version_2_pipeline_json_still_loads() -> None:
    """Version 2 kept the capabilities (and an always-false `streams`) among the limits."""
    encoder = TextEncoderSpec(component="text_encoder", tokenizer="tokenizer", vocab_size=1000, max_length=77,
                              variable_length=False, hidden_size=32, hidden_layer=-1, pooled_size=0,
                              takes_attention_mask=False, pad_token_id=0)
    spec = PipelineSpec(name="old", pipeline_class="StableDiffusionInpaintPipeline", family="sd-inpaint",
                        denoiser_component="unet", latent_channels=4, denoiser_out_channels=4, vae_scale_factor=8,
                        vae_scaling_factor=0.18215, vae_shift_factor=None, text_encoders=(encoder,), limits=LIMITS,
                        capabilities=Capabilities(task="image", edits=True, inpaint_model=True, precision="fp16"))
    v2 = json.loads(spec.to_json())
    v2["limits"] |= v2.pop("capabilities") | {"streams": False}
    v2["format_version"] = 2
    assert PipelineSpec.from_json(json.dumps(v2)) == spec


def test_unsupported_pipeline_is_refused() -> None:
    class NotAPipeline:
        pass

    with pytest.raises(ValueError, match="unsupported pipeline NotAPipeline"):
        spec_from_pipeline(NotAPipeline(), "x")


LIMITS = GenerationLimits(
    family="sd3", default_width=64, default_height=64, min_size=16, max_width=128, max_height=128, size_multiple=8,
    default_steps=50, max_steps=100, max_images=10, default_guidance_scale=7.5, max_guidance_scale=50.0,
    default_scheduler="flow_euler", schedulers=scheduler_names(True), default_max_sequence_length=256,
    max_sequence_length=512, true_cfg=False,
)
GOOD = {"num_images": 1, "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 1, "width": 64, "height": 64,
        "scheduler": "flow_euler", "max_sequence_length": 0, "true_cfg_scale": 1.0}


def test_limits_round_trip_through_config_parameters() -> None:
    served = ServedPipeline(LIMITS, Capabilities(task="image", edits=True, precision="int8"), streams=True)
    parameters = served.to_parameters()
    assert all(isinstance(value, str) for value in parameters.values())
    assert ServedPipeline.from_parameters(parameters) == served
    LIMITS.validate(**GOOD)
    assert LIMITS.sequence_length_for(0) == 256 and LIMITS.sequence_length_for(77) == 77


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("num_images", 11, "n"), ("num_inference_steps", 0, "num_inference_steps"),
     ("num_inference_steps", 101, "num_inference_steps"), ("guidance_scale", 51.0, "guidance_scale"),
     ("seed", -1, "seed"), ("width", 60, "size"), ("height", 136, "size"), ("height", 8, "size"),
     ("scheduler", "lms", "scheduler"), ("scheduler", "euler", "scheduler"),
     ("max_sequence_length", 513, "max_sequence_length"), ("true_cfg_scale", 4.0, "true_cfg_scale")],
)
def test_limits_name_the_offending_param(field: str, value: object, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        LIMITS.validate(**(GOOD | {field: value}))
    assert caught.value.param == param
    assert str(value) in caught.value.message or field == "true_cfg_scale"


def test_a_unet_scheduler_on_a_flow_pipeline_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidRequestError, match="flow_euler, flow_dpm\\+\\+, default for this sd3 pipeline"):
        LIMITS.validate(**(GOOD | {"scheduler": "euler_a"}))
    no_t5 = replace(LIMITS, default_max_sequence_length=0, max_sequence_length=0)
    with pytest.raises(InvalidRequestError, match="has none"):
        no_t5.validate(**(GOOD | {"max_sequence_length": 77}))


@pytest.mark.parametrize("flow", [False, True])
def test_every_scheduler_builds_from_the_pipeline_config(pipes: dict, flow: bool) -> None:
    pipe = pipes["tiny-flux" if flow else "tiny-sd"]
    for name in scheduler_names(flow):
        scheduler = build_scheduler(name, dict(pipe.scheduler.config))
        if flow and scheduler.config.get("use_dynamic_shifting"):
            scheduler.set_timesteps(4, mu=0.7)
        else:
            scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4


def test_scheduler_factory_hands_out_independent_fresh_schedulers(pipes: dict) -> None:
    factory = SchedulerFactory(dict(pipes["tiny-sd"].scheduler.config))
    first, second = factory("dpm++"), factory("dpm++")
    assert first is not second and type(first).__name__ == "DPMSolverMultistepScheduler"
    first.set_timesteps(4)
    assert second.timesteps is None or len(second.timesteps) != 4  # the template was not touched
    with pytest.raises(InvalidRequestError):
        factory("lms")


@pytest.mark.parametrize("name", list(FAMILY_OF_TINY))
def test_tokenizers_match_the_pipelines_own(pipes: dict, specs: dict, tmp_path: Path, name: str) -> None:
    """Our `tokenizers`-only tokenizer equals transformers' call as the pipelines make it."""
    prompts = ["a red fox, très rapide!", "", "blurry " * 200]  # unicode, empty, truncated
    for encoder in specs[name].text_encoders:
        hf = getattr(pipes[name], encoder.tokenizer)
        tokenizer = PromptTokenizer.from_directory(save_prompt_tokenizer(hf, tmp_path / encoder.tokenizer).parent,
                                                   encoder.pad_token_id)
        for length in {encoder.max_length, 33}:
            ids, mask = tokenizer(prompts, length)
            expected = hf(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
            np.testing.assert_array_equal(ids, expected["input_ids"])
            np.testing.assert_array_equal(mask, expected["attention_mask"])


def _values(**overrides: object) -> dict:
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "", "num_images": 2, "num_inference_steps": 3,
            "guidance_scale": 4.0, "seed": 11, "height": 48, "width": 64, "scheduler": "default",
            "max_sequence_length": 0, "true_cfg_scale": 1.0} | overrides


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("tiny-sd", {"scheduler": "euler_a"}), ("tiny-pixart", {"scheduler": "dpm++", "negative_prompt": "ugly"}),
     ("tiny-sdxl", {}), ("tiny-sdxl", {"negative_prompt": "ugly", "scheduler": "ddim"}),
     ("tiny-sd3", {"max_sequence_length": 40}),
     ("tiny-sd3", {"max_sequence_length": 320}), ("tiny-sd3", {"scheduler": "flow_dpm++", "negative_prompt": "ugly"}),
     ("tiny-flux", {}), ("tiny-flux", {"true_cfg_scale": 3.0, "negative_prompt": "ugly", "scheduler": "flow_dpm++"})],
)
def test_core_loop_with_torch_models_equals_diffusers(pipes: dict, specs: dict, name: str, overrides: dict) -> None:
    """The loop Triton runs, with the PyTorch modules as `predict`, reproduces diffusers bit for bit."""
    values = _values(**overrides)
    if name == "tiny-flux":
        values["height"] = 64  # Flux packs 2x2 latents: sizes are multiples of 8 here
    expected = diffusers_images(pipes[name], values)
    served = torch_loop_images(pipes[name], specs[name], values)
    # Bit for bit, except Flux's true CFG: diffusers runs the prompt and the negative prompt as two
    # batch-1 calls where D-Gate sends one batch of two, and a batched matmul may round differently.
    allowed = 1 if values["true_cfg_scale"] > 1 else 0
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= allowed
    assert expected.std() > 5


def test_cancellation_stops_the_loop(pipes: dict, specs: dict) -> None:
    spec = specs["tiny-sd"]
    calls = []

    def call(component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(1)
        return {"noise_pred": np.zeros_like(inputs["sample"])}

    params = DenoiseParams(num_images=1, num_inference_steps=10, guidance_scale=7.5, seed=0, height=64, width=64,
                           scheduler="euler", max_sequence_length=0, true_cfg_scale=1.0, negative_prompt="")
    text = torch_text_outputs(pipes["tiny-sd"], spec, "a fox", "")
    with pytest.raises(DenoiseCancelled):
        denoise(spec, params, SchedulerFactory(dict(pipes["tiny-sd"].scheduler.config)), text, call,
                is_cancelled=lambda: len(calls) >= 2)
    assert len(calls) == 2


def test_every_family_is_registered_once() -> None:
    classes = [c for family in FAMILIES.values() for c in family.pipeline_classes]
    assert len(classes) == len(set(classes))


def test_flux_schnell_has_no_guidance_input_and_matches_diffusers(tmp_path: Path) -> None:
    """A "schnell"-style checkpoint (no guidance embedding, no dynamic shift) through the same adapter."""
    from dgate.tiny import build_tiny_pipeline

    pipe = DiffusionPipeline.from_pretrained(str(build_tiny_pipeline("tiny-flux-schnell", tmp_path)))
    spec = spec_from_pipeline(pipe, "schnell")
    assert not spec.guidance_embeds
    assert "guidance" not in {t.name for t in family_of(spec).denoiser_inputs(spec)}
    values = _values(height=64, num_inference_steps=2, scheduler="flow_euler")
    np.testing.assert_array_equal(torch_loop_images(pipe, spec, values), diffusers_images(pipe, values))


def _video_values(**overrides: object) -> dict:
    return {"prompt": "a paper boat on a river", "negative_prompt": "", "num_images": 1, "num_inference_steps": 3,
            "guidance_scale": 7.5, "seed": 5, "height": 48, "width": 64, "scheduler": "default",
            "max_sequence_length": 0, "true_cfg_scale": 1.0, "num_frames": 5, "fps": 8, "motion_bucket_id": 127,
            "noise_aug_strength": 0.02, "decode_chunk_size": 0} | overrides


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("tiny-animatediff", {}), ("tiny-animatediff", {"scheduler": "euler_a", "negative_prompt": "blurry",
                                                     "decode_chunk_size": 2}),
     ("tiny-svd", {"guidance_scale": 3.0, "fps": 7}),
     ("tiny-svd", {"guidance_scale": 2.5, "fps": 12, "motion_bucket_id": 40, "noise_aug_strength": 0.1,
                   "decode_chunk_size": 2})],
)
def test_video_path_with_torch_models_equals_diffusers(pipes: dict, specs: dict, name: str, overrides: dict) -> None:
    """`generate_video` (what the Triton video denoiser runs) on the PyTorch modules against the pipeline.

    AnimateDiff is bit for bit. SVD: the pipeline normalizes the CLIP input in its feature extractor
    (transformers, in NumPy), D-Gate inside the exported image encoder (torch): up to 1/255."""
    values = _video_values(**overrides)
    image = (np.random.default_rng(3).random((40, 72, 3)) * 255).astype(np.uint8)  # another size than the video's
    expected = diffusers_video(pipes[name], values, image)
    served = torch_loop_video(pipes[name], specs[name], values, image)
    assert served.shape == expected.shape == (1, 5, 48, 64, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= (0 if name == "tiny-animatediff" else 1)
    assert expected.std() > 5


def test_video_limits_come_from_the_pipelines(specs: dict) -> None:
    animatediff, svd = specs["tiny-animatediff"].limits, specs["tiny-svd"].limits
    animatediff_task, svd_task = specs["tiny-animatediff"].capabilities.task, specs["tiny-svd"].capabilities.task
    video = {"video": specs["tiny-svd"].capabilities.is_video}
    assert (animatediff_task, animatediff.default_num_frames, animatediff.max_num_frames) == ("text-to-video", 16, 32)
    assert animatediff.default_fps == 8 and animatediff.default_scheduler == "ddim"
    assert (svd_task, svd.default_num_frames, svd.default_fps) == ("image-to-video", 8, 7)  # unet num_frames, fps
    assert svd.schedulers == ("default",) and svd.default_guidance_scale == 3.0  # max_guidance_scale
    assert specs["tiny-svd"].exported_components == ("image_encoder", "unet", "vae_decoder", "vae_encoder")
    good = {"num_images": 1, "num_inference_steps": 2, "guidance_scale": 3.0, "seed": 0, "width": 64, "height": 64,
            "scheduler": "default", "num_frames": 8, "fps": 7}
    svd.validate(**good, **video)
    for bad, param in (({"num_frames": 1}, "num_frames"), ({"num_frames": 33}, "num_frames"), ({"fps": 0}, "fps"),
                       ({"num_images": 2}, "n"), ({"noise_aug_strength": 1.5}, "noise_aug_strength"),
                       ({"decode_chunk_size": 9}, "decode_chunk_size"), ({"motion_bucket_id": -1}, "motion_bucket_id")):
        with pytest.raises(InvalidRequestError) as error:
            svd.validate(**(good | bad), **video)
        assert error.value.param == param
    with pytest.raises(InvalidRequestError, match="makes images, not videos"):
        specs["tiny-sd"].limits.validate(**(good | {"scheduler": "euler"}),
                                         video=specs["tiny-sd"].capabilities.is_video)


def test_deadline_parameter_is_read_from_the_request_parameters() -> None:
    from dgate.core.cancellation import DEADLINE_PARAMETER, deadline_of

    assert deadline_of(f'{{"{DEADLINE_PARAMETER}": 1700000000500}}') == 1700000000.5
    for absent in (None, "", "{}", '{"other": 1}', "not json", "[1]", f'{{"{DEADLINE_PARAMETER}": "soon"}}',
                   f'{{"{DEADLINE_PARAMETER}": true}}'):
        assert deadline_of(absent) is None, absent


def test_cancellation_board_marks_clears_and_sweeps(tmp_path: Path) -> None:
    from dgate.core.cancellation import CancellationBoard

    board, other = CancellationBoard(tmp_path), CancellationBoard(tmp_path)  # two stubs, one directory
    assert not board.is_cancelled("video-1") and not board.is_cancelled("")
    other.cancel("video-1")
    assert board.is_cancelled("video-1") and not board.is_cancelled("video-2")
    board.clear("video-1")
    assert not board.is_cancelled("video-1")
    other.cancel("../odd id/∂")  # any client string: hashed into a file name inside the board
    assert board.is_cancelled("../odd id/∂") and [p.parent for p in tmp_path.iterdir()] == [tmp_path]
    board.sweep(max_age_s=-1)
    assert not list(tmp_path.iterdir())
