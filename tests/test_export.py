"""Export: ONNX checks, FP16, config rendering for both serving modes, atomic repository writes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from diffusers import DiffusionPipeline
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dgate.core.errors import ExportError
from dgate.core.families import family_of, spec_from_pipeline
from dgate.core.pipeline_spec import PipelineSpec
from dgate.export.onnx_export import EXTERNAL_DATA_FILE, EXTERNAL_DATA_THRESHOLD
from dgate.export.pipeline_export import export_pipeline
from dgate.export.repository import write_model
from dgate.export.tensorrt_build import build_engine, profile_shapes
from dgate.export.triton_config import (
    ServingOptions,
    component_config,
    denoiser_config,
    ensemble_config,
    render,
    tokenize_config,
    video_denoiser_config,
)


@pytest.fixture(scope="module")
def specs(tiny_models: dict[str, Path]) -> dict[str, PipelineSpec]:
    return {name: spec_from_pipeline(DiffusionPipeline.from_pretrained(str(path)), name)
            for name, path in tiny_models.items()}


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_repository_has_every_model_with_onnx_and_shims(model_repository: Path, specs: dict) -> None:
    for pipeline, spec in specs.items():
        for component in spec.exported_components:
            model_dir = model_repository / f"{pipeline}_{component}"
            onnx.checker.check_model(str(model_dir / "1" / "model.onnx"))
            assert "from dgate.model_repository.component_model import" in (model_dir / "1" / "model.py").read_text()
            config = _parse((model_dir / "config.pbtxt").read_text())
            assert config.backend == "python" and config.dynamic_batching.max_queue_delay_microseconds > 0
        for encoder in spec.text_encoders:
            assert (model_repository / f"{pipeline}_tokenize" / "1" / encoder.tokenizer / "tokenizer.json").is_file()
        exported = PipelineSpec.load(model_repository / f"{pipeline}_denoiser" / "1" / "pipeline.json")
        if not spec.capabilities.is_video:  # partial images: the latent -> RGB map fitted to the VAE at export
            assert len(exported.preview_rgb) == spec.latent_channels + 1
            assert all(len(row) == 3 for row in exported.preview_rgb)
        assert replace(exported, preview_rgb=()) == spec
    assert not [p for p in model_repository.iterdir() if p.name.startswith(".")], "staging dirs left behind"
    transformer = onnx.load(str(model_repository / "tiny-pixart_transformer" / "1" / "model.onnx"))
    assert "If" not in {node.op_type for node in transformer.graph.node}


def test_external_data_models_keep_their_weights_beside_the_graph(model_repository: Path, specs: dict) -> None:
    """tiny-sdxl is exported with external data (conftest): one data file per model, moved with it."""
    for component in specs["tiny-sdxl"].exported_components:
        version = model_repository / f"tiny-sdxl_{component}" / "1"
        assert (version / EXTERNAL_DATA_FILE).stat().st_size > 0
        graph = onnx.load(str(version / "model.onnx"), load_external_data=False)
        large = [init for init in graph.graph.initializer if math.prod(init.dims) >= 1024]  # >= 4 KB in FP32
        assert large and all(init.data_location == onnx.TensorProto.EXTERNAL for init in large)
    assert not (model_repository / "tiny-sd_unet" / "1" / EXTERNAL_DATA_FILE).exists()


@pytest.mark.parametrize("lora", [True, False])
def test_ensemble_wires_the_component_tensors(specs: dict[str, PipelineSpec], lora: bool) -> None:
    options = ServingOptions(lora=lora)
    for spec in specs.values():
        config = _parse(render(ensemble_config(spec, options)))
        steps = {step.model_name.removeprefix(f"{spec.name}_"): step for step in config.ensemble_scheduling.step}
        encoders = [e.component for e in spec.text_encoders]
        video = spec.capabilities.is_video
        lora = lora and not video  # video pipelines take no adapters (yet)
        if video:  # the decoupled denoiser returns the frames (and progress before them)
            tokenize_step = ["tokenize"] if encoders else []
            assert list(steps) == [*tokenize_step, *encoders, "denoiser"]
            assert {t.name for t in config.output} == {"video", "progress"}
            assert _parse(render(video_denoiser_config(spec, options))).model_transaction_policy.decoupled
        else:  # the denoiser runs the VAE through BLS; async (the default): decoupled, streaming
            assert list(steps) == ["tokenize", *encoders, "denoiser"]
            assert {t.name for t in config.output} == {"images", "progress", "steps", "partial_image",
                                                       "partial_image_index"}
            assert _parse(render(denoiser_config(spec, options))).model_transaction_policy.decoupled
            assert {t.name for t in config.input if t.optional} == {"image", "mask", "strength", "partial_images",
                                                                    "stream_progress"}
            blocking = replace(options, denoiser="blocking")
            assert {t.name for t in _parse(render(ensemble_config(spec, blocking))).output} == {"images"}
            assert not _parse(render(denoiser_config(spec, blocking))).model_transaction_policy.decoupled
        if not encoders:
            continue
        tokenize = _parse(render(tokenize_config(spec, options)))
        produced = {t.name for t in tokenize.output}
        for encoder in spec.text_encoders:
            # Text encoders take the request's adapters per prompt row when LoRA is served.
            lora_input = {"lora"} if lora else set()
            assert set(steps[encoder.component].input_map) == {t.name for t in encoder.inputs} | lora_input
            assert {f"{encoder.component}_{t.name}" for t in encoder.inputs} <= produced
            encoder_config = component_config(spec, encoder.component, options)
            assert {t.name for t in encoder_config.input} == {t.name for t in encoder.inputs} | lora_input
            assert ("lora_component" in encoder_config.parameters) == lora
        assert ("lora_rows" in steps["tokenize"].output_map) == lora
        denoiser = _parse(render((video_denoiser_config if video else denoiser_config)(spec, options)))
        if not video:
            assert denoiser.parameters["lora"].string_value == str(lora).lower()
        assert set(steps["denoiser"].input_map) == {t.name for t in denoiser.input}
        ensemble_tensors = {t.name for t in config.input} | {
            value for step in steps.values() for value in step.output_map.values()}
        assert set(steps["denoiser"].input_map.values()) <= ensemble_tensors  # every input is produced
        assert config.parameters["dgate_pipeline"].string_value == "true"
        assert config.parameters["max_steps"].string_value == str(spec.limits.max_steps)
        assert config.parameters["family"].string_value == spec.family


def test_native_configs_for_the_ngc_image(specs: dict[str, PipelineSpec]) -> None:
    spec = specs["tiny-sd"]
    onnx_config = component_config(spec, "unet", ServingOptions(triton_backend="native", device="gpu"))
    assert onnx_config.platform == "onnxruntime_onnx" and onnx_config.default_model_filename == "model.onnx"
    assert onnx_config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    trt = component_config(spec, "unet", ServingOptions(triton_backend="native", engine="tensorrt", device="gpu"))
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert trt.optimization.cuda.graphs  # the native backend replays CUDA graphs of the shapes it meets
    in_python = component_config(spec, "unet", ServingOptions(engine="tensorrt", device="gpu"))
    assert in_python.backend == "python" and in_python.parameters["engine"].string_value == "tensorrt"
    assert in_python.parameters["lora_component"].string_value == "unet"  # LoRA by refit of the plan
    assert in_python.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert [i.name for i in trt.input] == ["sample", "timestep", "encoder_hidden_states"]  # same names either way
    assert trt.max_batch_size == 2 * spec.limits.max_images  # cond + uncond for every image


def test_tensorrt_profiles_cover_the_limits(specs: dict[str, PipelineSpec]) -> None:
    spec = specs["tiny-sd"]
    shapes = profile_shapes(spec, "unet", max_batch_size=20)
    assert shapes["sample"] == ((1, 4, 8, 8), (2, 4, 32, 32), (20, 4, 64, 64))
    assert shapes["encoder_hidden_states"][2] == (20, 77, 32)
    assert profile_shapes(spec, "vae_encoder", 10)["image"][2] == (10, 3, 128, 128)
    flux = specs["tiny-flux"]
    shapes = profile_shapes(flux, "transformer", max_batch_size=20)
    assert shapes["encoder_hidden_states"] == ((1, 1, 32), (2, 512, 32), (20, 512, 32))  # T5 length 1..512
    assert shapes["img_ids"][2] == (20, (512 // 4) ** 2, 3)  # packed 2x2 latent tokens at the largest size
    assert profile_shapes(flux, "text_encoder_2", 20)["input_ids"][1] == (2, 512)
    sd3 = specs["tiny-sd3"]
    assert profile_shapes(sd3, "transformer", 20)["encoder_hidden_states"][1][1] == 77 + 256  # CLIP + T5


def test_every_family_has_a_denoiser_wrapper_matching_its_tensors(specs: dict[str, PipelineSpec],
                                                                   tiny_models: dict[str, Path]) -> None:
    import inspect

    for name, spec in specs.items():
        family = family_of(spec)
        module = family.denoiser_module(DiffusionPipeline.from_pretrained(str(tiny_models[name])), spec)
        names = list(inspect.signature(module.forward).parameters)
        assert names[: len(family.denoiser_inputs(spec))] == [t.name for t in family.denoiser_inputs(spec)]


def test_tensorrt_needs_a_gpu_and_the_package(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--device gpu"):  # refused before the model is read
        export_pipeline(str(tmp_path / "no-such-model"), tmp_path, options=ServingOptions(engine="tensorrt"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="needs the `tensorrt` package"):
            build_engine(tmp_path / "x.onnx", tmp_path / "x.plan", {})
        with pytest.raises(ExportError, match="needs the `tensorrt` package"):  # before the model is read
            export_pipeline(str(tmp_path / "no-such-model"), tmp_path,
                            options=ServingOptions(engine="tensorrt", device="gpu"))


# threshold 0: every weight in model.onnx.data, the layout of every full-size UNet. FP16 conversion of
# that layout once ran without shape inference and wrote a Resize ONNX Runtime refused to load.
@pytest.mark.parametrize("external_data_threshold", [EXTERNAL_DATA_THRESHOLD, 0], ids=["inline", "external"])
def test_fp16_export_stays_close_to_pytorch(tiny_models: dict, tmp_path: Path, external_data_threshold: int) -> None:
    report = export_pipeline(str(tiny_models["tiny-sd"]), tmp_path, name="sd16", precision="fp16",
                             external_data_threshold=external_data_threshold)
    fp16 = {check.component: check for check in report.checks if check.precision == "fp16"}
    assert set(fp16) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert report.spec.precisions == dict.fromkeys(fp16, "fp16")
    assert all(check.ok for check in fp16.values())
    unet = onnx.load(str(tmp_path / "sd16_unet" / "1" / "model.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in unet.graph.initializer)
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 at the edges


def test_a_failed_model_write_leaves_nothing_behind(tmp_path: Path) -> None:
    config = mc.ModelConfig(name="broken", backend="python")
    with pytest.raises(FileNotFoundError):
        write_model(tmp_path, config, {"model.py": "x = 1\n", "model.onnx": tmp_path / "missing.onnx"})
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="precision must be fp32 or fp16"):  # before the model is read
        export_pipeline(str(tmp_path / "no-such-model"), tmp_path, precision="int4")
