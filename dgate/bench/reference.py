"""The UNet/transformer math alone: the repository's own ONNX model run in this process, Triton idle.

Triton's statistics count everything inside the UNet model (stub IPC, threads fighting over the
cores) as UNet compute, so the step-cost formula cannot see it; this reference can.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from dgate.core.pipeline_spec import PipelineSpec


def denoiser_feed(spec: PipelineSpec, size: int, rows: int = 2) -> dict[str, np.ndarray]:
    """One CFG step of one image (uncond + cond rows), shaped as the denoiser model sends it."""
    rng = np.random.default_rng(0)
    feed = {
        "sample": rng.standard_normal(spec.latent_shape(rows, size, size), dtype=np.float32),
        "timestep": np.full((rows, 1), 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((rows, spec.text_max_length, spec.text_hidden_size),
                                                     dtype=np.float32),
    }
    if spec.uses_attention_mask:
        feed["encoder_attention_mask"] = np.ones((rows, spec.text_max_length), dtype=np.int64)
    return feed


class UnetReference:
    """The repository's UNet/transformer ONNX with the component model's session options, in this process."""

    def __init__(self, model_dir: Path, spec: PipelineSpec, size: int, onnx_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = onnx_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
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
