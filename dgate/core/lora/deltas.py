"""Adapter factors + a component's LoraMap -> weight deltas in the ONNX layout, cached LRU."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from dgate.core.lora.adapter_file import LoraLayer
from dgate.core.lora.low_rank import ByteLRUCache
from dgate.core.lora.request import LoraError
from dgate.core.lora.weight_map import LoraMap

# ONNX initializer name -> float32 delta shaped like the initializer
Deltas = dict[str, np.ndarray]


def layer_deltas(component: str, layers: dict[str, LoraLayer], lora_map: LoraMap) -> Deltas:
    """Each layer's scale * up @ down, placed on its initializer; LoraError if a layer or shape is off."""
    deltas: Deltas = {}
    for name, layer in layers.items():
        mapped = lora_map.layers.get(name)
        if mapped is None and name in lora_map.unused:
            continue
        if mapped is None:
            raise LoraError(f"{component}: the adapter's layer {name!r} matches no refittable layer of the model")
        delta = layer.delta()
        if delta.size != int(np.prod(mapped.shape)):
            raise LoraError(f"{component}: the adapter's layer {name!r} has shape {tuple(delta.shape)}, "
                            f"the model's weight is {mapped.shape}")
        delta = delta.reshape(mapped.shape)
        if mapped.transposed:
            delta = np.ascontiguousarray(delta.T)
        deltas[mapped.initializer] = deltas.get(mapped.initializer, 0) + delta
    return deltas


K = TypeVar("K")
V = TypeVar("V")


class LRUCache(ByteLRUCache[K, V]):
    """The most recently used `capacity` values (no byte bound); `get_or_load` computes a missing one."""

    def __init__(self, capacity: int) -> None:
        super().__init__(0, size=lambda _value: 0, max_items=max(1, capacity))
