"""LoRA on TensorRT engines: `trt.Refitter` over an engine built with `BuilderFlag.REFIT`.

The same bookkeeping as ONNX Runtime: host copies of the mapped weights (by ONNX initializer name,
the names TensorRT's ONNX parser gives refittable weights) go through `WeightRefitter`, and only
the weights that changed are pushed to the engine, then `refit_cuda_engine()` applies them.
UNPROVEN: written against TensorRT 10's Python API; no GPU was available to run it (see the issue 7
note). `tensorrt` is imported lazily.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from dgate.core.lora.deltas import Deltas
from dgate.core.lora.refit import WeightRefitter
from dgate.core.lora.weight_map import LoraMap
from dgate.core.onnx_session import load_initializers


class EngineRefitter:
    def __init__(self, engine: Any, onnx_path: Path, lora_map: LoraMap, refitter: Any = None) -> None:
        if refitter is None:
            import tensorrt as trt

            refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
        self.trt_refitter = refitter
        self.weights = load_initializers(onnx_path, lora_map.initializers)  # host copies, FP32
        self.refitter = WeightRefitter(self.weights)

    def apply(self, key: Hashable, adapters: Sequence[tuple[Deltas, float]]) -> None:
        import tensorrt as trt

        for name in sorted(self.refitter.apply(key, adapters)):
            # trt.Weights does not copy: the numpy buffer stays alive in self.weights.
            if not self.trt_refitter.set_named_weights(name, trt.Weights(self.weights[name])):
                raise RuntimeError(f"TensorRT refused refit weights {name!r} (engine not built with REFIT?)")
        if not self.trt_refitter.refit_cuda_engine():
            raise RuntimeError("TensorRT refit failed; missing weights: "
                               + ", ".join(self.trt_refitter.get_missing_weights()))
