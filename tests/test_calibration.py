"""`dgate calibrate`: which layers get Q/DQ, INT8 weights stored as INT8, FP8 for TensorRT only, and
the refusals (another model's calibration, FP8 on ONNX Runtime, bad arguments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dgate.calibration.qdq import fold_weight_quantizers, needs_tensorrt, quantized_layers
from dgate.calibration.recipe import DEFAULT_EXCLUDED, CalibrationRecipe
from dgate.cli import main
from dgate.core.errors import ExportError
from dgate.core.lora.request import AdapterRef, LoraError
from dgate.core.quantization import MANIFEST_FILE, FusedAdapter, Quantization, adapter_digest


def _graph(directory: Path, component: str = "unet") -> onnx.ModelProto:
    return onnx.load(str(directory / component / "model.onnx"))


def _excluded(layer: str, patterns: tuple[str, ...]) -> bool:
    return any(pattern in layer for pattern in patterns)


def test_int8_calibration_quantizes_the_blocks_and_leaves_the_excluded_layers(quantized_models: dict[str, Path],
                                                                               tiny_models: dict[str, Path]) -> None:
    directory = quantized_models["tiny-sd-int8"]
    graph = _graph(directory)
    layers = quantized_layers(graph)
    # Attention projections, feed-forwards and resnet convs of every block carry quantizers ...
    for expected in ("down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_q",
                     "mid_block/resnets.0/conv1", "up_blocks.0/resnets.0/conv2"):
        assert expected in layers, sorted(layers)[:10]
    # ... the default exclusions none (conv_in/out, time embeddings, skip convs, proj_out), nor any
    # normalisation layer (modelopt would quantize LayerNorm inputs).
    assert not [layer for layer in layers if _excluded(layer, DEFAULT_EXCLUDED)]
    assert not [layer for layer in layers if layer.rsplit("/", 1)[-1].startswith("norm")]
    # Weights are stored as INT8 (no QuantizeLinear left on a constant), one per quantized weight.
    initializers = {t.name: t for t in graph.graph.initializer}
    assert not [n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in initializers]
    weight_dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and "weight_quantizer" in n.name]
    assert weight_dq and all(initializers[n.input[0]].data_type == TensorProto.INT8 for n in weight_dq)
    quantization = Quantization.load(directory / MANIFEST_FILE)
    assert (quantization.precision, quantization.algorithm, quantization.component) == ("int8", "smoothquant", "unet")
    assert quantization.quantized_layers == len(layers) and quantization.tool.startswith("nvidia-modelopt")
    fp32_bytes = sum(p.stat().st_size for p in (tiny_models["tiny-sd"] / "unet").glob("*.safetensors"))
    int8_bytes = (directory / "unet" / "model.onnx").stat().st_size
    assert int8_bytes < 0.5 * fp32_bytes, (int8_bytes, fp32_bytes)


def test_dit_calibration_quantizes_the_transformer_blocks(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from dgate.calibration.calibrate import calibrate

    result = calibrate(str(tiny_models["tiny-pixart"]), tmp_path / "pixart-int8", CalibrationRecipe("int8", steps=2),
                       ["a red fox", "a lighthouse"])
    layers = quantized_layers(_graph(result.out, "transformer"))
    assert "transformer_blocks.0/attn1/to_q" in layers and "transformer_blocks.0/ff/net.2" in layers, sorted(layers)
    assert not [layer for layer in layers if _excluded(layer, DEFAULT_EXCLUDED)]  # proj_out, adaln_single, ...
    assert result.onnx_error is not None and result.onnx_error < 0.05


def test_fp8_is_for_tensorrt_and_onnxruntime_export_refuses_it(tiny_models: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sd-fp8"
    code = main(["calibrate", "--model", str(tiny_models["tiny-sd"]), "--precision", "fp8", "--out", str(out),
                 "--num-prompts", "2", "--steps", "2", "--also-exclude", "attn2"])
    assert code == 0, capsys.readouterr().err
    graph = _graph(out)
    assert needs_tensorrt(graph)  # TensorRT's FP8 Q/DQ ops
    layers = quantized_layers(graph)
    assert layers and not [layer for layer in layers if "attn2" in layer]  # the extra exclusion held
    assert "TensorRT" in capsys.readouterr().out

    repository = tmp_path / "repository"
    code = main(["export", "--model", str(tiny_models["tiny-sd"]), "--quantized", str(out), "--out", str(repository)])
    assert code == 2
    assert "FP8 needs TensorRT" in capsys.readouterr().err
    assert not repository.exists() or not any(repository.iterdir())  # nothing half-written


def test_a_calibration_of_another_model_is_refused(tiny_models: dict[str, Path], quantized_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    from dgate.export.pipeline_export import export_pipeline

    with pytest.raises(ExportError, match="quantizes 'unet'"):
        export_pipeline(str(tiny_models["tiny-pixart"]), tmp_path, quantized=quantized_models["tiny-sd-int8"])
    with pytest.raises(ExportError, match="calibrated from a different unet"):
        export_pipeline(str(tiny_models["tiny-sdxl"]), tmp_path, quantized=quantized_models["tiny-sd-int8"])
    with pytest.raises(ExportError, match="no quantization.json"):
        export_pipeline(str(tiny_models["tiny-sd"]), tmp_path, quantized=tmp_path)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--alpha", "2"], "alpha must be between 0 and 1"),
    (["--prompts", "no-such-file.txt"], "no-such-file.txt"),
    (["--out", "."], "is not empty"),
])
def test_calibrate_argument_errors_are_one_line(tiny_models: dict[str, Path], tmp_path: Path, arguments: list[str],
                                                message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--model": str(tiny_models["tiny-sd"]), "--precision": "int8", "--out": str(tmp_path / "out")}
    for flag, value in zip(arguments[::2], arguments[1::2], strict=True):
        base[flag] = value
    assert main(["calibrate", *[item for pair in base.items() for item in pair]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_folding_weight_quantizers_is_exact_and_stores_int8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)  # [in, out] for MatMul, per-column scales
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["w_q"], axis=1,
                         name="/m/l/weight_quantizer/QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=1,
                         name="/m/l/weight_quantizer/DequantizeLinear"),
        helper.make_node("MatMul", ["x", "w_dq"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "w_scale"),
         numpy_helper.from_array(np.zeros(4, np.int8), "w_zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert fold_weight_quantizers(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    stored = {t.name: t for t in model.graph.initializer}["w_q"]
    assert stored.data_type == TensorProto.INT8
    np.testing.assert_array_equal(run(model), before)
    assert quantized_layers(model) == {"l"}


def test_recipe_becomes_modelopt_config() -> None:
    config = CalibrationRecipe("int8", alpha=0.5, excluded=("conv_in",)).modelopt_config()
    assert config["algorithm"] == {"method": "smoothquant", "alpha": 0.5}
    names = [entry["quantizer_name"] for entry in config["quant_cfg"]]
    assert names[:3] == ["*", "*weight_quantizer", "*input_quantizer"] and names[-1] == "*conv_in*"  # later win
    assert {e.get("parent_class") for e in config["quant_cfg"]} >= {"nn.LayerNorm", "nn.InstanceNorm2d"}
    assert config["quant_cfg"][1]["cfg"] == {"num_bits": 8, "axis": 0}  # per-channel INT8 weights
    fp8 = CalibrationRecipe("fp8").modelopt_config()
    assert fp8["algorithm"] == "max" and fp8["quant_cfg"][2]["cfg"]["num_bits"] == (4, 3)  # E4M3
    with pytest.raises(ValueError, match="precision must be one of int8, fp8"):
        CalibrationRecipe("int4")


def test_quantized_pipelines_take_only_their_fused_adapters(tmp_path: Path) -> None:
    (tmp_path / "fused.safetensors").write_bytes(b"fused adapter bytes")
    (tmp_path / "other.safetensors").write_bytes(b"another adapter")
    fused = FusedAdapter("fused.safetensors", adapter_digest(tmp_path / "fused.safetensors"), 0.8)
    quantization = Quantization("int8", "unet", "smoothquant", 0.8, (), 8, 4, 100, "nvidia-modelopt", "x",
                                fused_adapters=(fused,))
    quantization.check_adapters("p", (AdapterRef("fused.safetensors", 0.8),), tmp_path)  # accepted: already in
    with pytest.raises(LoraError, match=r"p is quantized \(int8\).*'fused.safetensors' at scale 0.5"):
        quantization.check_adapters("p", (AdapterRef("fused.safetensors", 0.5),), tmp_path)
    with pytest.raises(LoraError, match="dgate calibrate --fuse-lora"):
        quantization.check_adapters("p", (AdapterRef("other.safetensors", 0.8),), tmp_path)
    assert Quantization.from_dict(quantization.to_dict()) == quantization
