"""The per-step cost of the denoiser's BLS loop, from Triton's own statistics.

Method: over one measured level, (denoiser compute time per request) / steps - (UNet compute time
per execution) = what one step costs beyond the UNet math: the BLS round trip (shared-memory IPC
both ways), waiting in the UNet queue (batching delay and other requests' batches) and the
scheduler arithmetic in the denoiser. The UNet's batching is inference_count / execution_count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHOD = ("per-step overhead = denoiser compute_infer per request / steps - UNet compute_infer per execution "
          "(Triton get_inference_statistics deltas over the level): BLS IPC + UNet queueing + scheduler math")


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model (Triton reports them since load); subtract two snapshots."""

    requests: int = 0  # successful requests
    inference_count: int = 0  # batch rows (a CFG step of one image is 2 rows)
    execution_count: int = 0
    compute_ns: int = 0  # inference_stats.compute_infer: summed per request
    queue_ns: int = 0  # inference_stats.queue: summed per request
    batch_compute_ns: int = 0  # batch_stats compute_infer: summed per execution

    @classmethod
    def from_json(cls, stats: dict[str, Any]) -> ModelCounters:
        model = stats["model_stats"][0]
        inference = model.get("inference_stats", {})

        def ns(key: str, source: dict[str, Any] = inference) -> int:
            return int(source.get(key, {}).get("ns", 0))

        return cls(
            requests=int(inference.get("success", {}).get("count", 0)),
            inference_count=int(model.get("inference_count", 0)),
            execution_count=int(model.get("execution_count", 0)),
            compute_ns=ns("compute_infer"),
            queue_ns=ns("queue"),
            batch_compute_ns=sum(ns("compute_infer", b) for b in model.get("batch_stats", [])),
        )

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a - b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))

    def __add__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))


@dataclass(frozen=True)
class StepCost:
    """The BLS loop's numbers over one measured level."""

    concurrency: int
    steps: int
    denoiser_ms_per_request: float
    unet_ms_per_execution: float
    unet_queue_ms_per_call: float
    rows_per_execution: float
    calls_per_execution: float

    @property
    def denoiser_ms_per_step(self) -> float:
        return self.denoiser_ms_per_request / self.steps

    @property
    def overhead_ms_per_step(self) -> float:
        return self.denoiser_ms_per_step - self.unet_ms_per_execution

    @classmethod
    def from_deltas(cls, concurrency: int, steps: int, denoiser: ModelCounters, unet: ModelCounters) -> StepCost:
        if denoiser.requests == 0 or unet.execution_count == 0 or unet.requests == 0:
            raise RuntimeError("Triton's statistics show no denoiser/UNet work for this level")
        return cls(
            concurrency=concurrency,
            steps=steps,
            denoiser_ms_per_request=denoiser.compute_ns / denoiser.requests / 1e6,
            unet_ms_per_execution=unet.batch_compute_ns / unet.execution_count / 1e6,
            unet_queue_ms_per_call=unet.queue_ns / unet.requests / 1e6,
            rows_per_execution=unet.inference_count / unet.execution_count,
            calls_per_execution=unet.requests / unet.execution_count,
        )


class StatsProbe:
    """Snapshots of the denoiser and UNet/transformer counters through a tritonclient (grpc.aio) client."""

    def __init__(self, client: Any, pipeline: str, denoiser_component: str) -> None:
        self.client = client
        self.denoiser, self.unet = f"{pipeline}_denoiser", f"{pipeline}_{denoiser_component}"

    async def snapshot(self) -> tuple[ModelCounters, ModelCounters]:
        denoiser = await self.client.get_inference_statistics(self.denoiser, as_json=True)
        unet = await self.client.get_inference_statistics(self.unet, as_json=True)
        return ModelCounters.from_json(denoiser), ModelCounters.from_json(unet)
