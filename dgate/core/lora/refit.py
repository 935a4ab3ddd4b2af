"""Apply a set of adapters to live weight buffers in place, and restore the base bitwise.

Every layer any adapter has touched keeps a copy of its base weight, and each switch rebuilds the
new set's layers from those copies (base + sum of scaled deltas) and copies the base back into the
layers the old set touched and the new one does not. So weights never drift: A -> B -> A gives
A's bytes again (TensorRT issue 3628's blending cannot happen), and no adapters gives the base.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from dgate.core.lora.low_rank import LowRankDelta, write_low_rank


class WeightRefitter:
    """Over numpy buffers (ONNX Runtime's refittable session). `TorchWeightRefitter`: torch tensors."""

    def __init__(self, live: dict[str, Any]) -> None:
        self.live = live  # weight name -> the buffer the engine reads
        self._base: dict[str, Any] = {}
        self._changed: set[str] = set()
        self.current: Hashable = ()  # key of the applied adapter set; () = base weights

    def apply(self, key: Hashable, adapters: Sequence[tuple[Mapping[str, Any], float]]) -> set[str]:
        """Make the live weights base + sum(scale * delta); `key` names the set (no work if current).

        Returns the names of the buffers written (what a TensorRT refit must push).
        """
        if key == self.current:
            return set()
        contributions: dict[str, list[tuple[Any, float]]] = {}
        for deltas, scale in adapters:
            for name, delta in deltas.items():
                contributions.setdefault(name, []).append((delta, scale))
        written = self._changed | contributions.keys()
        for name in self._changed - contributions.keys():
            self._restore(self.live[name], self._base[name])
        for name, terms in contributions.items():
            buffer = self.live[name]
            if name not in self._base:
                self._base[name] = self._copy(buffer)
            self._write_sum(buffer, self._base[name], terms)
        self._changed = set(contributions)
        self.current = key
        return written

    def _copy(self, buffer: Any) -> Any:
        return buffer.copy()

    def _restore(self, buffer: Any, base: Any) -> None:
        np.copyto(buffer, base)

    def _write_sum(self, buffer: Any, base: Any, terms: list[tuple[Any, float]]) -> None:
        _write_sum(buffer, base, terms)


class TorchWeightRefitter(WeightRefitter):
    """The same bookkeeping over torch parameters on their device (CPU or CUDA), deltas on that device
    too (`AdapterSets.prepare` moves each adapter's deltas once), so a switch never crosses the bus."""

    def _copy(self, buffer: Any) -> Any:
        return buffer.detach().clone()

    def _restore(self, buffer: Any, base: Any) -> None:
        buffer.copy_(base)

    def _write_sum(self, buffer: Any, base: Any, terms: list[tuple[Any, float]]) -> None:
        # Summed in float32 and rounded once into the weight's dtype, as the numpy path does.
        import torch

        total = torch.zeros(buffer.shape, dtype=torch.float32, device=buffer.device)
        for delta, scale in terms:
            if isinstance(delta, LowRankDelta):  # factors: the product is formed here, on the device
                total.view(delta.left.shape[0], -1).addmm_(delta.left, delta.right, alpha=float(scale))
            else:
                total.add_(delta, alpha=float(scale))
        total.add_(base)
        buffer.copy_(total)


def _write_sum(buffer: np.ndarray, base: np.ndarray, terms: list[tuple[Any, float]]) -> None:
    """buffer = sum(scale * delta) + base, in float32, written in place without temporaries (a full
    SD 1.5 attention adapter is ~100 M weights and this is memory-bound: two numpy passes took
    70 ms where one expression with temporaries took 130 ms, and torch's multi-threaded add 2.3 s
    on this 2-core machine)."""
    target = buffer if buffer.dtype == np.float32 else np.empty(buffer.shape, np.float32)
    factors = [(delta, scale) for delta, scale in terms if isinstance(delta, LowRankDelta)]
    dense = [(delta, scale) for delta, scale in terms if not isinstance(delta, LowRankDelta)]
    if factors:  # base + the factors' product, formed block by block (low_rank.py), then any dense terms
        write_low_rank(target, base, factors)
        for delta, scale in dense:
            target += np.float32(scale) * delta
    else:
        (first, first_scale), rest = dense[0], dense[1:]
        np.multiply(first, np.float32(first_scale), out=target)
        for delta, scale in rest:
            target += np.float32(scale) * delta
        np.add(target, base, out=target, casting="unsafe")
    if target is not buffer:  # FP16 weights: summed in float32, rounded once into the weight's dtype
        np.copyto(buffer, target, casting="unsafe")
