"""Apply a set of adapters to live weight buffers in place, and restore the base bitwise.

Every layer any adapter has touched keeps a copy of its base weight, and each switch rebuilds the
new set's layers from those copies (base + sum of scaled deltas) and copies the base back into the
layers the old set touched and the new one does not. So weights never drift: A -> B -> A gives
A's bytes again (TensorRT issue 3628's blending cannot happen), and no adapters gives the base.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from dgate.core.lora.deltas import Deltas


class WeightRefitter:
    def __init__(self, live: dict[str, np.ndarray]) -> None:
        self.live = live  # initializer name -> the buffer the session reads
        self._base: dict[str, np.ndarray] = {}
        self._changed: set[str] = set()
        self.current: Hashable = ()  # key of the applied adapter set; () = base weights

    def apply(self, key: Hashable, adapters: Sequence[tuple[Deltas, float]]) -> set[str]:
        """Make the live weights base + sum(scale * delta); `key` names the set (no work if current).

        Returns the names of the buffers written (what a TensorRT refit must push).
        """
        if key == self.current:
            return set()
        total: dict[str, np.ndarray] = {}
        for deltas, scale in adapters:
            for name, delta in deltas.items():
                scaled = np.float32(scale) * delta
                total[name] = total[name] + scaled if name in total else scaled
        written = self._changed | total.keys()
        for name in self._changed - total.keys():
            np.copyto(self.live[name], self._base[name])
        for name, delta in total.items():
            buffer = self.live[name]
            base = self._base.setdefault(name, buffer.copy())
            # Sum in float32, then round once into the weight's own dtype (FP16 models).
            np.copyto(buffer, (base.astype(np.float32) + delta).astype(buffer.dtype))
        self._changed = set(total)
        self.current = key
        return written
