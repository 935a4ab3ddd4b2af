"""Adapters kept as their low-rank factors, and an LRU cache bounded in bytes.

A rank-r adapter's change to an [out, in] weight is up @ down: r * (out + in) numbers instead of
out * in. Dense FP32 deltas of a rank-8 SD 1.5 UNet adapter take ~0.4 GB; its factors ~4 MB. The
product is formed only while a weight is written, one block of rows at a time, so the full delta
never exists in memory and the block stays in the CPU cache (what `WeightRefitter` writes is the
same sum, base + sum(scale * delta), rounded once into the weight's dtype).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from dgate.core.lora.adapter_file import LoraLayer
from dgate.core.lora.request import LoraError
from dgate.core.lora.weight_map import LoraMap

CACHE_MB_ENV = "DGATE_LORA_CACHE_MB"
DEFAULT_CACHE_MB = 1024.0  # per component instance; factors of a rank-8 SD 1.5 UNet adapter are ~4 MB
BLOCK_BYTES = 1 << 18  # rows of the product formed at once: they stay in the CPU cache (256 KiB measured best)


@dataclass(frozen=True)
class LowRankDelta:
    """An initializer's change as `left @ right`, reshaped to the initializer's `shape` (scale folded in).

    numpy arrays, or torch tensors once an engine moved them to its device (`on_device`)."""

    left: Any  # [rows, rank]
    right: Any  # [rank, cols]; rows * cols == prod(shape)
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(self.left.nbytes + self.right.nbytes)

    def dense(self) -> np.ndarray:
        return np.asarray(self.left @ self.right, np.float32).reshape(self.shape)


def layer_factors(component: str, layers: dict[str, LoraLayer], lora_map: LoraMap) -> dict[str, LowRankDelta]:
    """Each layer's factors placed on its initializer (the checks of `deltas.layer_deltas`); layers that
    share an initializer are one factor pair of the summed rank."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]] = {}
    for name, layer in layers.items():
        mapped = lora_map.layers.get(name)
        if mapped is None and name in lora_map.unused:
            continue
        if mapped is None:
            raise LoraError(f"{component}: the adapter's layer {name!r} matches no refittable layer of the model")
        rank = layer.down.shape[0]
        up = layer.up.reshape(layer.up.shape[0], rank).astype(np.float32) * np.float32(layer.scale)
        down = layer.down.reshape(rank, -1).astype(np.float32)
        if up.shape[0] * down.shape[1] != int(np.prod(mapped.shape)):
            shape = (up.shape[0], *layer.down.shape[1:])
            raise LoraError(f"{component}: the adapter's layer {name!r} has shape {shape}, "
                            f"the model's weight is {mapped.shape}")
        if mapped.transposed:  # stored as W^T: (up @ down)^T = down^T @ up^T
            left, right, shape = np.ascontiguousarray(down.T), np.ascontiguousarray(up.T), mapped.shape[::-1]
        else:
            left, right, shape = up, down, mapped.shape
        if right.shape[1] != int(np.prod(shape[1:])):  # a conv weight's [out, in*k*k] product, as [out, in, k, k]
            raise LoraError(f"{component}: the adapter's layer {name!r} does not match the model's {mapped.shape}")
        parts.setdefault(mapped.initializer, []).append((left, right, tuple(shape)))
    return {initializer: LowRankDelta(np.concatenate([p[0] for p in pieces], axis=1),
                                      np.concatenate([p[1] for p in pieces], axis=0), pieces[0][2])
            for initializer, pieces in parts.items()}


def write_low_rank(target: np.ndarray, base: np.ndarray, terms: list[tuple[LowRankDelta, float]]) -> None:
    """target = base + sum(scale * left @ right), float32 `target` written block by block in place.

    All terms are one product of the concatenated factors (their ranks add up), so one matmul per block."""
    rows = terms[0][0].left.shape[0]
    left = np.concatenate([delta.left * np.float32(scale) for delta, scale in terms], axis=1)
    right = np.concatenate([delta.right for delta, _ in terms], axis=0)
    out2d, base2d = target.reshape(rows, -1), base.reshape(rows, -1)
    step = max(1, BLOCK_BYTES // max(1, out2d.shape[1] * 4))
    for start in range(0, rows, step):
        block = out2d[start:start + step]
        np.matmul(left[start:start + step], right, out=block)
        np.add(block, base2d[start:start + step], out=block, casting="unsafe")


def nbytes(value: Any) -> int:
    """Bytes held by a cached adapter: a dict of numpy arrays, torch tensors or `LowRankDelta`s."""
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, LowRankDelta):
        return value.nbytes
    if hasattr(value, "element_size"):  # a torch tensor
        return int(value.numel() * value.element_size())
    return int(getattr(value, "nbytes", 0))


def on_device(factors: dict[str, LowRankDelta], prepare: Callable[[dict[str, Any]], dict[str, Any]]
              ) -> dict[str, LowRankDelta]:
    """Factors moved by an engine's `prepare` (which takes and returns name -> array dicts)."""
    flat = {f"{name}\0{side}": getattr(delta, side) for name, delta in factors.items() for side in ("left", "right")}
    moved = prepare(flat)
    return {name: LowRankDelta(moved[f"{name}\0left"], moved[f"{name}\0right"], delta.shape)
            for name, delta in factors.items()}


def cache_bytes() -> int:
    """The adapter cache's bound per component instance: DGATE_LORA_CACHE_MB (default 1024)."""
    return int(float(os.environ.get(CACHE_MB_ENV, DEFAULT_CACHE_MB)) * 2**20)


K = TypeVar("K")
V = TypeVar("V")


class ByteLRUCache(Generic[K, V]):
    """Values kept while their bytes (`size`) sum to at most `capacity`, least recently used evicted first.

    The value just loaded always stays (one adapter larger than the bound still serves its request),
    and `max_items` bounds the count too (DGATE_LORA_CACHE, the older count bound)."""

    def __init__(self, capacity: int, size: Callable[[V], int] = nbytes, max_items: int | None = None) -> None:
        self.capacity = max(0, capacity)
        self.max_items = max_items
        self.size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = load()  # raises before anything is cached
        size = self.size(value)
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > 1 and (self.bytes > self.capacity
                                        or (self.max_items is not None and len(self._items) > self.max_items)):
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[K]:
        return list(self._items)
