"""The per-step overhead of serving one request, for both denoiser designs.

per-step overhead = (the client's mean latency at concurrency 1 - the summed compute of every model
the request ran, from Triton's statistics, the denoiser's own excluded) / steps.

What is left is everything that is not a model's math: gRPC and the ensemble's hand-offs, each BLS
round trip (shared-memory IPC both ways), queueing, the scheduler arithmetic and streaming in the
denoiser. The denoiser is left out of the sum because its compute time is not comparable across the
designs: the blocking denoiser's execute holds the whole request (its compute contains every BLS
call), while the async (decoupled) denoiser's execute returns at once, so Triton's compute statistics
hold almost none of its time. The client's latency holds both.

At concurrency 1 no model batches two requests, so each model's per-request compute
(inference_stats.compute_infer) is the time its executions took for this request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dgate.bench.triton_stats import Snapshot

METHOD = ("per-step overhead = (client mean latency at c=1 - summed compute_infer of every model the request "
          "ran, the denoiser's own excluded) / steps (Triton get_inference_statistics deltas over the level): "
          "gRPC + ensemble hand-offs + BLS IPC + queueing + scheduler math")


@dataclass(frozen=True)
class StepOverhead:
    """The measure, or why it could not be computed (`reason`; then the numbers are not meaningful)."""

    steps: int
    requests: int
    latency_ms: float  # the client's mean per request
    compute_ms: dict[str, float]  # per request, by model (the denoiser excluded)
    reason: str = ""

    @property
    def available(self) -> bool:
        return not self.reason

    @property
    def model_ms(self) -> float:
        return sum(self.compute_ms.values())

    @property
    def ms_per_step(self) -> float:
        return (self.latency_ms - self.model_ms) / self.steps

    def describe(self) -> str:
        if not self.available:
            return f"unavailable: {self.reason}"
        models = ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(self.compute_ms.items(), key=lambda kv: -kv[1]))
        return (f"client {self.latency_ms:.1f} ms/request (mean of {self.requests}) - model compute "
                f"{self.model_ms:.1f} ms/request ({models}) = {self.latency_ms - self.model_ms:.1f} ms over "
                f"{self.steps} steps -> {self.ms_per_step:.2f} ms/step")


def unavailable(steps: int, reason: str) -> StepOverhead:
    return StepOverhead(steps=steps, requests=0, latency_ms=0.0, compute_ms={}, reason=reason)


def step_overhead(latencies_s: Sequence[float], steps: int, deltas: Snapshot, pipeline: str,
                  denoiser_component: str) -> StepOverhead:
    """From the client's latencies (seconds) of the requests sent one at a time straight to Triton, and
    the statistics' deltas over exactly those requests."""
    if steps <= 0:
        return unavailable(steps, f"{steps} steps")
    if not latencies_s:
        return unavailable(steps, "no request was measured at concurrency 1")
    denoiser = f"{pipeline}_denoiser"
    if deltas[denoiser].requests != len(latencies_s):
        # The window must hold exactly the measured requests, or the compute belongs to other ones.
        return unavailable(steps, f"Triton counted {deltas[denoiser].requests} {denoiser} requests over the level, "
                                  f"the client sent {len(latencies_s)}")
    unet = f"{pipeline}_{denoiser_component}"
    if deltas[unet].requests == 0:
        return unavailable(steps, f"Triton's statistics show no {unet} work over the level")
    # The ensemble is left out too: it runs no math of its own (what Triton reports for it is its steps' time).
    compute = {name: counters.compute_ns / len(latencies_s) / 1e6 for name, counters in deltas.models.items()
               if name not in (pipeline, denoiser) and counters.requests > 0}
    return StepOverhead(steps=steps, requests=len(latencies_s),
                        latency_ms=sum(latencies_s) / len(latencies_s) * 1000.0, compute_ms=compute)
