"""Export: ONNX checks, FP16, config rendering for both serving modes, atomic repository writes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from diffusers import DiffusionPipeline
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dgate.core.errors import ExportError
from dgate.core.pipeline_spec import PipelineSpec
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
)


@pytest.fixture(scope="module")
def specs(tiny_models: dict[str, Path]) -> dict[str, PipelineSpec]:
    return {name: PipelineSpec.from_pipeline(DiffusionPipeline.from_pretrained(str(path)), name)
            for name, path in tiny_models.items()}


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_repository_has_every_model_with_onnx_and_shims(model_repository: Path) -> None:
    for pipeline, denoiser in (("tiny-sd", "unet"), ("tiny-pixart", "transformer")):
        for component in ("text_encoder", denoiser, "vae_decoder", "vae_encoder"):
            model_dir = model_repository / f"{pipeline}_{component}"
            onnx.checker.check_model(str(model_dir / "1" / "model.onnx"))
            assert "from dgate.model_repository.component_model import" in (model_dir / "1" / "model.py").read_text()
            config = _parse((model_dir / "config.pbtxt").read_text())
            assert config.backend == "python" and config.dynamic_batching.max_queue_delay_microseconds > 0
        assert (model_repository / f"{pipeline}_tokenize" / "1" / "tokenizer").is_dir()
        assert PipelineSpec.load(model_repository / f"{pipeline}_denoiser" / "1" / "pipeline.json").name == pipeline
    assert not [p for p in model_repository.iterdir() if p.name.startswith(".")], "staging dirs left behind"
    transformer = onnx.load(str(model_repository / "tiny-pixart_transformer" / "1" / "model.onnx"))
    assert "If" not in {node.op_type for node in transformer.graph.node}


def test_ensemble_wires_the_component_tensors(specs: dict[str, PipelineSpec]) -> None:
    for spec in specs.values():
        config = _parse(render(ensemble_config(spec)))
        steps = {step.model_name.removeprefix(f"{spec.name}_"): step for step in config.ensemble_scheduling.step}
        assert list(steps) == ["tokenize", "text_encoder", "denoiser", "vae_decoder", "postprocess"]
        text_inputs = {t.name for t in spec.text_encoder_inputs}
        assert set(steps["text_encoder"].input_map) == text_inputs
        denoiser = _parse(render(denoiser_config(spec, ServingOptions())))
        assert set(steps["denoiser"].input_map) == {t.name for t in denoiser.input}
        assert config.parameters["dgate_pipeline"].string_value == "true"
        assert config.parameters["max_steps"].string_value == str(spec.limits.max_steps)
        tokenize = _parse(render(tokenize_config(spec)))
        assert list(tokenize.output[0].dims) == [2, spec.text_max_length]


def test_native_configs_for_the_ngc_image(specs: dict[str, PipelineSpec]) -> None:
    spec = specs["tiny-sd"]
    onnx_config = component_config(spec, "unet", ServingOptions(triton_backend="native", device="gpu"))
    assert onnx_config.platform == "onnxruntime_onnx" and onnx_config.default_model_filename == "model.onnx"
    assert onnx_config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    trt = component_config(spec, "unet", ServingOptions(triton_backend="native", engine="tensorrt", device="gpu"))
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert [i.name for i in trt.input] == ["sample", "timestep", "encoder_hidden_states"]  # same names either way
    assert trt.max_batch_size == 2 * spec.limits.max_images  # cond + uncond for every image


def test_tensorrt_profiles_cover_the_limits(specs: dict[str, PipelineSpec]) -> None:
    spec = specs["tiny-sd"]
    shapes = profile_shapes(spec, spec.denoiser_model_inputs, max_batch_size=20)
    assert shapes["sample"] == ((1, 4, 8, 8), (2, 4, 32, 32), (20, 4, 64, 64))
    assert shapes["encoder_hidden_states"][2] == (20, 77, 32)
    assert profile_shapes(spec, spec.vae_decoder_outputs, 10)["image"][2] == (10, 3, 128, 128)


def test_tensorrt_needs_the_native_backend_and_the_package(tiny_models: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--triton-backend native"):
        export_pipeline(str(tiny_models["tiny-sd"]), tmp_path, options=ServingOptions(engine="tensorrt"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="needs the `tensorrt` package"):
            build_engine(tmp_path / "x.onnx", tmp_path / "x.plan", {})


def test_fp16_export_stays_close_to_pytorch(tiny_models: dict, tmp_path: Path) -> None:
    report = export_pipeline(str(tiny_models["tiny-sd"]), tmp_path, name="sd16", precision="fp16")
    fp16 = {check.component: check for check in report.checks if check.precision == "fp16"}
    assert set(fp16) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert all(check.ok for check in fp16.values())
    unet = onnx.load(str(tmp_path / "sd16_unet" / "1" / "model.onnx"))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in unet.graph.initializer)
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 at the edges


def test_a_failed_model_write_leaves_nothing_behind(tmp_path: Path) -> None:
    config = mc.ModelConfig(name="broken", backend="python")
    with pytest.raises(FileNotFoundError):
        write_model(tmp_path, config, {"model.py": "x = 1\n", "model.onnx": tmp_path / "missing.onnx"})
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision_is_refused(tiny_models: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="precision must be fp32 or fp16"):
        export_pipeline(str(tiny_models["tiny-sd"]), tmp_path, precision="int4")
