"""Triton's own statistics (get_inference_statistics), snapshotted before and after a measured level.

The UNet's batching over a level is inference_count / execution_count (rows per execution) and
success count / execution_count (requests per execution); the per-step overhead of the whole request
is in `dgate.bench.step_overhead`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
    def from_model_stats(cls, model: dict[str, Any]) -> ModelCounters:
        """One entry of the statistics' `model_stats` (gRPC's JSON writes the int64 counts as strings)."""
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
class Snapshot:
    """The counters of every model of one pipeline (the ensemble and its `<pipeline>_*` models), by name."""

    models: Mapping[str, ModelCounters] = field(default_factory=dict)

    @classmethod
    def from_json(cls, stats: dict[str, Any], pipeline: str) -> Snapshot:
        """From get_inference_statistics("", as_json=True): every model Triton has; this pipeline's kept."""
        models: dict[str, ModelCounters] = {}
        for model in stats.get("model_stats", []):
            name = model.get("name", "")
            if name == pipeline or name.startswith(f"{pipeline}_"):
                models[name] = models.get(name, ModelCounters()) + ModelCounters.from_model_stats(model)
        return cls(models)

    def __getitem__(self, name: str) -> ModelCounters:
        return self.models.get(name, ModelCounters())

    def _combine(self, other: Snapshot, sign: int) -> Snapshot:
        names = dict.fromkeys([*self.models, *other.models])
        return Snapshot({name: self[name] + other[name] if sign > 0 else self[name] - other[name] for name in names})

    def __sub__(self, other: Snapshot) -> Snapshot:
        return self._combine(other, -1)

    def __add__(self, other: Snapshot) -> Snapshot:
        return self._combine(other, +1)


@dataclass(frozen=True)
class UnetBatching:
    """The UNet's (or transformer's) work over one measured level, from its counter deltas."""

    concurrency: int
    ms_per_execution: float
    queue_ms_per_call: float
    rows_per_execution: float
    calls_per_execution: float

    @classmethod
    def from_deltas(cls, concurrency: int, unet: ModelCounters) -> UnetBatching:
        if unet.execution_count == 0 or unet.requests == 0:
            raise RuntimeError("Triton's statistics show no UNet/transformer work for this level")
        return cls(
            concurrency=concurrency,
            ms_per_execution=unet.batch_compute_ns / unet.execution_count / 1e6,
            queue_ms_per_call=unet.queue_ns / unet.requests / 1e6,
            rows_per_execution=unet.inference_count / unet.execution_count,
            calls_per_execution=unet.requests / unet.execution_count,
        )


class StatsProbe:
    """Snapshots of one pipeline's counters through a tritonclient (grpc.aio) client."""

    def __init__(self, client: Any, pipeline: str, denoiser_component: str) -> None:
        self.client, self.pipeline = client, pipeline
        self.denoiser, self.unet = f"{pipeline}_denoiser", f"{pipeline}_{denoiser_component}"

    async def snapshot(self) -> Snapshot:
        return Snapshot.from_json(await self.client.get_inference_statistics("", as_json=True), self.pipeline)

    async def settled(self, before: Snapshot, requests: int, timeout_s: float = 2.0) -> Snapshot:
        """A snapshot once the denoiser has counted `requests` more than `before` (or after `timeout_s`):
        a model reports a request's statistics when it releases it, which can come after the client has
        its answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            after = await self.snapshot()
            if (after - before)[self.denoiser].requests >= requests or time.monotonic() >= deadline:
                return after
            await asyncio.sleep(0.01)
