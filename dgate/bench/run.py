"""`dgate bench`: in-process diffusers vs Triton directly vs the frontend, in one run on one machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgate.bench import report
from dgate.bench.servers import start_servers
from dgate.bench.triton_stats import StatsProbe, StepCost
from dgate.bench.workload import (
    DiffusersPath,
    FrontendPath,
    LevelResult,
    TritonPath,
    Workload,
    cpu_count,
    measure_async,
)
from dgate.core.pipeline_spec import PipelineSpec

log = logging.getLogger(__name__)

WARMUP_SEEDS = range(10_000, 10_100)
MEASURED_SEED = 1_000  # level seeds: 1000, 1001, ...: every path and level sends the same requests


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _serving_line(configs: dict[str, dict[str, Any]]) -> str:
    def instances(config: dict[str, Any]) -> int:
        return sum(int(group.get("count", 1)) for group in config.get("instance_group", []))

    denoiser, unet = configs["denoiser"], configs["unet"]
    delay = unet.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
    threads = unet.get("parameters", {}).get("onnx_threads", {}).get("string_value", "?")
    return (f"serving: {instances(denoiser)} denoiser instances; {unet['name']}: {instances(unet)} instance(s), "
            f"max_queue_delay {delay} us, onnx_threads {threads} (0 = all cores)")


async def _served(servers: Any, pipeline: str, component: str, workload: Workload, levels: Sequence[int],
                  requests: int, reference: np.ndarray) -> tuple[list[LevelResult], list[StepCost], list[str]]:
    triton = TritonPath(servers.grpc_url, pipeline, workload)
    frontend = FrontendPath(servers.frontend_url, pipeline, workload)
    await triton.open()
    notes: list[str] = []
    try:
        configs = {key: (await triton.client.get_model_config(f"{pipeline}_{name}", as_json=True))["config"]
                   for key, name in (("denoiser", "denoiser"), ("unet", component))}
        notes.append(_serving_line(configs))
        warm = iter(WARMUP_SEEDS)
        for path in (triton, frontend):
            log.info("warming up %s", type(path).__name__)
            await measure_async(path.generate, [next(warm)], 1, "warm-up")
            await measure_async(path.generate, [next(warm) for _ in range(2 * max(levels))], max(levels), "warm-up")
        diffs = [int(np.abs((await p.generate(MEASURED_SEED)).astype(int) - reference.astype(int)).max())
                 for p in (triton, frontend)]
        notes.append(f"same request, max pixel difference vs diffusers: triton {diffs[0]}, frontend {diffs[1]}")

        probe = StatsProbe(triton.client, pipeline, component)
        results: list[LevelResult] = []
        costs: list[StepCost] = []
        seeds = range(MEASURED_SEED, MEASURED_SEED + requests)
        for concurrency in levels:
            for label, path in ((report.TRITON, triton), (report.FRONTEND, frontend)):
                before = await probe.snapshot()
                results.append(await measure_async(path.generate, seeds, concurrency, label))
                after = await probe.snapshot()
                if label == report.TRITON:
                    costs.append(StepCost.from_deltas(concurrency, workload.steps, after[0] - before[0],
                                                      after[1] - before[1]))
                last = results[-1]
                log.info("%s c=%d: %.2f img/s, p50 %.1f ms", label, concurrency, last.throughput,
                         last.percentile_ms(50))
        return results, costs, notes
    finally:
        await frontend.close()
        await triton.close()


def run_bench(args: argparse.Namespace) -> int:
    model_dir, repository = Path(args.model), Path(args.model_repository)
    pipeline = model_dir.name
    spec_file = repository / f"{pipeline}_denoiser" / "1" / "pipeline.json"
    if not spec_file.is_file():
        raise SystemExit(f"{repository} has no pipeline '{pipeline}' (looked for {spec_file}); "
                         f"export {model_dir} into it first")
    component = PipelineSpec.load(spec_file).denoiser_component
    levels = sorted(set(args.concurrency))
    workload = Workload(steps=args.steps, size=args.size)
    load_before = _load()
    log.info("load average before: %s", load_before)

    with tempfile.TemporaryDirectory(prefix="dgate-bench-") as workdir, \
            start_servers(repository, Path(workdir)) as servers:
        log.info("loading %s in-process with diffusers", model_dir)
        diffusers = DiffusersPath(model_dir, workload)
        for seed in WARMUP_SEEDS[:2]:
            diffusers.generate(seed)
        baseline = diffusers.measure(range(MEASURED_SEED, MEASURED_SEED + args.requests), report.DIFFUSERS)
        log.info("diffusers: %.2f img/s, p50 %.1f ms", baseline.throughput, baseline.percentile_ms(50))
        reference = diffusers.generate(MEASURED_SEED)
        served, costs, notes = asyncio.run(
            _served(servers, pipeline, component, workload, levels, args.requests, reference))

    results = [baseline, *served]
    found = report.targets(results, costs)
    print(f"dgate bench: pipeline {pipeline}, {workload.steps} steps, {workload.size}x{workload.size}, "
          f"guidance {workload.guidance_scale}, n=1, {args.requests} requests per level (distinct seeds), "
          f"{cpu_count()} CPU cores; load average (1/5/15 min) before {load_before}, after {_load()}")
    for note in notes:
        print(note)
    print(report.table(results))
    for line in report.step_lines(costs) + report.target_lines(found):
        print(line)
    return 0
