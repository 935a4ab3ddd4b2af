"""Graph fixes for artefacts of the legacy (TorchScript) ONNX exporter."""

from __future__ import annotations

import logging
from typing import Any

import onnx
import torch
from onnx import helper

logger = logging.getLogger(__name__)


def drop_dynamic_squeeze_branches(model: onnx.ModelProto) -> int:
    """Replace `If(dim == 1, Squeeze, Identity)` with the Identity branch.

    `x.squeeze(1)` on a dynamic axis (PixArt's `proj_out(...).squeeze(1)` over the token axis)
    exports as an If whose Squeeze branch ONNX Runtime's shape inference rejects at load time. The
    token axis is never 1 at any served size (limits.min_size keeps >= 4 tokens), so the Identity
    branch is the one that runs. Returns the number of nodes replaced.
    """
    replaced = 0
    nodes = model.graph.node
    for index, node in enumerate(list(nodes)):
        if node.op_type != "If":
            continue
        branches = {attribute.name: attribute.g for attribute in node.attribute}
        then_ops = [n.op_type for n in branches["then_branch"].node]
        else_nodes = branches["else_branch"].node
        if "Squeeze" in then_ops and [n.op_type for n in else_nodes] == ["Identity"]:
            identity = helper.make_node("Identity", [else_nodes[0].input[0]], list(node.output), name=f"{node.name}_id")
            nodes.remove(node)
            nodes.insert(index, identity)
            replaced += 1
    if replaced:
        logger.info("replaced %d dynamic squeeze branch(es) with identity", replaced)
    return replaced


def _rms_norm(g: Any, input: Any, normalized_shape: Any, weight: Any, eps: Any) -> Any:
    """aten::rms_norm as opset-17 ops: x / sqrt(mean(x^2 over the normalized dims) + eps) * weight."""
    from torch.onnx import symbolic_helper

    dims = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
    epsilon = None if symbolic_helper._is_none(eps) else symbolic_helper._maybe_get_const(eps, "f")
    if epsilon is None:
        epsilon = torch.finfo(torch.float32).eps  # torch's default for float32 inputs
    squared = g.op("Pow", input, g.op("Constant", value_t=torch.tensor(2.0)))
    mean = g.op("ReduceMean", squared, axes_i=list(range(-len(dims), 0)), keepdims_i=1)
    norm = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(float(epsilon)))))
    out = g.op("Div", input, norm)
    return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)


def register_missing_symbolics(opset: int) -> None:
    """Teach the TorchScript exporter ops it lacks at `opset`: torch.nn.RMSNorm (Flux's q/k norms)
    became aten::rms_norm, which has no ONNX symbolic before RMSNormalization (opset 23)."""
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)
