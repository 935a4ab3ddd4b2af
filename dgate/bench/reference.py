"""The UNet/transformer math alone: the repository's own ONNX model run in this process, Triton idle.

Triton's statistics count everything inside the UNet model (stub IPC, threads fighting over the
cores) as UNet compute, so the step-cost formula cannot see it; this reference can.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from dgate.core.onnx_session import create_session
from dgate.core.pipeline_spec import PipelineSpec


def denoiser_feed(spec: PipelineSpec, size: int, rows: int = 2) -> dict[str, np.ndarray]:
    """One CFG step of one image (uncond + cond rows), shaped as the denoiser model sends it."""
    from dgate.export.onnx_export import sample_inputs

    inputs = sample_inputs(spec, spec.denoiser_component, rows, size, size, seed=0)
    return {name: tensor.numpy() for name, tensor in inputs.items()}


class UnetReference:
    """The repository's UNet/transformer ONNX with the component model's session options, in this process."""

    def __init__(self, model_dir: Path, spec: PipelineSpec, size: int, onnx_threads: int) -> None:
        self.session = create_session(model_dir / "1" / "model.onnx", onnx_threads)
        self.feed = denoiser_feed(spec, size)
        self.samples: list[float] = []

    def measure(self, runs: int = 20) -> None:
        """Median ms of `runs` batch-2 runs; call it while Triton is idle, more than once."""
        for _ in range(3):
            self.session.run(None, self.feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run(None, self.feed)
            times.append(time.perf_counter() - start)
        self.samples.append(statistics.median(times) * 1000.0)

    @property
    def ms(self) -> float | None:
        """The quietest of the measurements: other tenants' load only ever adds time."""
        return min(self.samples, default=None)
