"""The quantized ONNX graph: store quantized weights as INT8 tensors, and say what is quantized where.

torch's ONNX export of a modelopt model writes every weight as FP32 followed by QuantizeLinear →
DequantizeLinear (fake quantization), so the file is as large as the FP32 one. Folding each constant
QuantizeLinear into an INT8 initializer (weight → DequantizeLinear only) makes the file ~4x
smaller for the quantized layers and is exact: it computes what the QuantizeLinear would.
modelopt's own `qdq_to_dq` needs its `[onnx]` extra (onnxruntime-gpu, cupy) and does not follow
the Transpose that the TorchScript exporter puts between a Linear weight's DequantizeLinear and its
MatMul, hence this small pass.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper

# TensorRT's FP8 Q/DQ as modelopt exports them (domain "trt"): ONNX Runtime cannot run these.
TENSORRT_ONLY_OPS = ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear")
QUANTIZE_OPS = ("QuantizeLinear", "TRT_FP8QuantizeLinear")
# modelopt names its nodes after the module: /unet/down_blocks.0/resnets.0/conv1/input_quantizer/QuantizeLinear
_LAYER = re.compile(r"^/(?:[^/]+/)?(?P<layer>.+)/(?:input|weight)_quantizer/")


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of a constant weight by its INT8 result, in place; returns the count."""
    initializers = {t.name: t for t in model.graph.initializer}
    constants = _constants(model)
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in model.graph.node:
        weight = node.input[0] if node.op_type == "QuantizeLinear" else ""
        if weight not in initializers or consumers.get(weight, 0) != 1 or node.input[1] not in constants:
            keep.append(node)
            continue
        scale = constants[node.input[1]]
        zero_point = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        if zero_point.dtype != np.int8:  # only the signed INT8 modelopt writes
            keep.append(node)
            continue
        values = numpy_helper.to_array(initializers[weight]).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        if scale.ndim:  # per-channel: broadcast along `axis`
            shape[axis % values.ndim] = scale.size
        quantized = np.clip(np.rint(values / scale.reshape(shape)) + zero_point.reshape(shape if scale.ndim else ()),
                            -128, 127).astype(np.int8)
        initializers[weight].CopyFrom(numpy_helper.from_array(quantized, node.output[0]))
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


def quantized_layers(model: onnx.ModelProto) -> set[str]:
    """Module paths (e.g. `down_blocks.0/resnets.0/conv1`) that carry a quantizer in the graph."""
    layers = set()
    for node in model.graph.node:
        if node.op_type in (*QUANTIZE_OPS, "DequantizeLinear", "TRT_FP8DequantizeLinear"):
            match = _LAYER.match(node.name)
            if match:
                layers.add(match.group("layer"))
    return layers


def needs_tensorrt(model: onnx.ModelProto) -> bool:
    return any(node.op_type in TENSORRT_ONLY_OPS for node in model.graph.node)
