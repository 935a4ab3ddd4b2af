"""The PyTorch layer -> ONNX initializer map that lets an adapter find its weights in a graph.

Exporters rename and transpose weights (a bias-free `nn.Linear` becomes `MatMul` with an anonymous,
pre-transposed `onnx::MatMul_123`), so names cannot be trusted; values can. At export every
Linear/Conv weight of the PyTorch module is matched to the initializer with the same bytes (or the
same bytes transposed), the way TensorRT's diffusion demo maps refit weights. Weights whose bytes
are not unique (e.g. zero-initialised layers) stay unmapped: an adapter touching them is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.lora.adapter_file import strip_text_model

LORA_MAP_FILE = "lora_map.json"
MAP_VERSION = 1


@dataclass(frozen=True)
class MappedWeight:
    initializer: str  # the ONNX initializer's name
    transposed: bool  # stored as W^T (MatMul) rather than PyTorch's [out, in]
    shape: tuple[int, ...]  # PyTorch's shape of the weight


@dataclass(frozen=True)
class LoraMap:
    """layer name (as in the diffusers/transformers module) -> its weight in the ONNX graph."""

    layers: dict[str, MappedWeight]
    # Layers of the module that the graph does not compute (SDXL's CLIPs stop at the penultimate
    # layer): an adapter's change there cannot affect the output, so it is skipped, not refused.
    unused: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps({"version": MAP_VERSION, "layers": {k: asdict(v) for k, v in sorted(self.layers.items())},
                           "unused": sorted(self.unused)}, indent=1)

    @classmethod
    def load(cls, path: Path) -> LoraMap:
        data = json.loads(path.read_text())
        return cls({k: MappedWeight(v["initializer"], v["transposed"], tuple(v["shape"]))
                    for k, v in data["layers"].items()}, frozenset(data.get("unused", ())))

    @property
    def initializers(self) -> set[str]:
        return {m.initializer for m in self.layers.values()}


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def build_lora_map(module: Any, initializers: dict[str, np.ndarray]) -> LoraMap:
    """Match every Linear/Conv weight of the torch `module` to an ONNX initializer by value."""
    from torch import nn

    by_digest: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
    for name, array in initializers.items():
        by_digest[(str(array.dtype), _digest(array))].append((name, False))
        if array.ndim == 2:
            by_digest[(str(array.dtype), _digest(array.T))].append((name, True))
    weights: dict[str, list[str]] = defaultdict(list)  # digest -> torch layers with those bytes
    arrays = {}
    for layer, child in module.named_modules():
        if isinstance(child, nn.Linear | nn.Conv1d | nn.Conv2d):
            array = child.weight.detach().float().cpu().numpy()
            arrays[layer] = array
            weights[_digest(array)].append(layer)
    layers: dict[str, MappedWeight] = {}
    unused: set[str] = set()
    for digest, names in weights.items():
        hits = by_digest.get(("float32", digest), [])
        if not hits:
            unused.update(strip_text_model(name) for name in names)  # pruned from the graph
        elif len(names) == 1 and len(hits) == 1:
            initializer, transposed = hits[0]
            layers[strip_text_model(names[0])] = MappedWeight(initializer, transposed, tuple(arrays[names[0]].shape))
        # else: several layers share these bytes; which initializer is whose is unknowable: not refittable
    return LoraMap(layers, frozenset(unused))
