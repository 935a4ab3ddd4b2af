"""`dgate bench-designs`: the async image denoiser (one decoupled instance) against the blocking one
(one request per instance, four instances), one run, same machine, same requests.

For each design the given pipelines are exported into a fresh repository and served by a fresh
tritonserver; the first pipeline is then sent `--requests` requests, `--concurrency` at a time,
through Triton's gRPC client (streaming for the async design). Printed per design: throughput,
latency, the UNet's achieved batch (rows per execution, and requests per execution with CFG's two
rows each) from Triton's statistics, and the resident memory (PSS) of the Triton process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dgate.bench.footprint import tree_footprint
from dgate.bench.triton_stats import ModelCounters, StatsProbe
from dgate.bench.workload import TritonPath, Workload, measure_async
from dgate.core.tensors import MAX_PARTIAL_IMAGES, PARTIAL_IMAGES, STREAM_PROGRESS
from dgate.triton_server import TritonServer, free_ports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DesignResult:
    design: str
    instances: int
    throughput: float
    p50_ms: float
    p95_ms: float
    unet: ModelCounters
    pss_idle: int
    pss_loaded: int
    streaming: tuple[float, float] | None  # p50 ms one at a time: plain, streamed (async only)

    @property
    def rows_per_execution(self) -> float:
        return self.unet.inference_count / max(self.unet.execution_count, 1)


async def _measure(url: str, pipeline: str, component: str, workload: Workload, concurrency: int, requests: int
                   ) -> tuple[list[float], float, ModelCounters]:
    path = TritonPath(url, pipeline, workload)
    await path.open()
    try:
        await measure_async(path.generate, list(range(1000, 1000 + concurrency)), concurrency, "warm-up")
        probe = StatsProbe(path.client, pipeline, component)
        before = await probe.snapshot()
        level = await measure_async(path.generate, list(range(requests)), concurrency, "measured")
        after = await probe.settled(before, requests)
        return list(level.latencies), level.throughput, (after - before)[probe.unet]
    finally:
        await path.close()


async def _streaming_cost(url: str, pipeline: str, workload: Workload, requests: int) -> tuple[float, float]:
    """p50 latency (ms) of one request at a time, plain vs streamed (progress every step + 3 partial
    images), alternating request by request on the same seeds so that load drift hits both alike."""
    plain = TritonPath(url, pipeline, workload)
    streamed = TritonPath(url, pipeline, workload,
                          {PARTIAL_IMAGES.name: MAX_PARTIAL_IMAGES, STREAM_PROGRESS.name: True})
    await plain.open()
    await streamed.open()
    try:
        times: dict[str, list[float]] = {"plain": [], "streamed": []}
        for seed in range(requests):
            for label, path in (("plain", plain), ("streamed", streamed))[:: 1 if seed % 2 else -1]:
                t0 = time.perf_counter()
                await path.generate(seed)
                times[label].append(time.perf_counter() - t0)
        return statistics.median(times["plain"]) * 1000, statistics.median(times["streamed"]) * 1000
    finally:
        await plain.close()
        await streamed.close()


def _bench_design(args: argparse.Namespace, design: str, instances: int, workdir: Path) -> DesignResult:
    import numpy as np

    from dgate.core.pipeline_spec import PipelineSpec
    from dgate.export.pipeline_export import export_pipeline
    from dgate.export.triton_config import ServingOptions

    repository = workdir / design
    options = ServingOptions(denoiser=design, denoiser_instances=instances, onnx_threads=args.onnx_threads)
    for model in args.model:
        export_pipeline(str(model), repository, options=options)
    pipeline = Path(args.model[0]).name
    spec = PipelineSpec.load(repository / f"{pipeline}_denoiser" / "1" / "pipeline.json")
    workload = Workload(steps=args.steps, size=args.size or spec.limits.default_width,
                        guidance_scale=spec.limits.default_guidance_scale)
    with TritonServer(repository, free_ports(), log_path=workdir / f"{design}.log") as server:
        assert server.process is not None
        pss_idle = tree_footprint(server.process.pid).pss
        latencies, throughput, unet = asyncio.run(_measure(server.ports.grpc_url, pipeline, spec.denoiser_component,
                                                           workload, args.concurrency, args.requests))
        pss_loaded = tree_footprint(server.process.pid).pss
        streaming = asyncio.run(_streaming_cost(server.ports.grpc_url, pipeline, workload, args.streaming_requests)
                                ) if design == "async" else None
    ms = np.asarray(latencies) * 1000
    return DesignResult(design, instances, throughput, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)),
                        unet, pss_idle, pss_loaded, streaming)


def run_design_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dgate-designs-") as workdir:
        results = [_bench_design(args, "blocking", args.blocking_instances, Path(workdir)),
                   _bench_design(args, "async", 1, Path(workdir))]
    blocking = results[0]
    print(f"dgate bench-designs: {Path(args.model[0]).name}, {args.steps} steps, {args.size or 'default'} px, n=1, "
          f"{args.requests} requests at concurrency {args.concurrency}; repository: "
          f"{', '.join(Path(m).name for m in args.model)}")
    print(f"{'design':<10} {'instances':>9} {'img/s':>7} {'vs blocking':>11} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'UNet rows/exec':>14} {'req/exec':>8} {'PSS idle MB':>11} {'PSS loaded MB':>13} {'PSS vs blocking':>15}")
    for r in results:
        print(f"{r.design:<10} {r.instances:>9} {r.throughput:>7.2f} {r.throughput / blocking.throughput:>10.2f}x "
              f"{r.p50_ms:>8.0f} {r.p95_ms:>8.0f} {r.rows_per_execution:>14.2f} {r.rows_per_execution / 2:>8.2f} "
              f"{r.pss_idle / 2**20:>11.0f} {r.pss_loaded / 2**20:>13.0f} "
              f"{r.pss_loaded / blocking.pss_loaded - 1:>+14.0%}")
    for r in results:
        if r.streaming is not None:
            plain, streamed = r.streaming
            print(f"cost of streaming ({r.design}, one request at a time, p50 of {args.streaming_requests} each, "
                  f"alternating): plain {plain:.0f} ms, with progress every step + {MAX_PARTIAL_IMAGES} partial images "
                  f"{streamed:.0f} ms ({streamed / plain - 1:+.1%})")
    return 0
