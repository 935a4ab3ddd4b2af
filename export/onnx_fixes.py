"""Graph fixes for artefacts of the legacy (TorchScript) ONNX exporter."""

from __future__ import annotations

import logging

import onnx
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
