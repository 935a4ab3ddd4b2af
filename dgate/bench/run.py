"""`dgate bench`: in-process diffusers vs Triton directly vs the frontend, in one run on one machine."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import operator
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgate.bench import report
from dgate.bench.footprint import format_footprint, tree_footprint
from dgate.bench.reference import UnetReference
from dgate.bench.servers import start_servers
from dgate.bench.step_overhead import StepOverhead, step_overhead, unavailable
from dgate.bench.triton_stats import Snapshot, StatsProbe, UnetBatching
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
                  requests: int, reference: np.ndarray
                  ) -> tuple[list[LevelResult], StepOverhead, list[UnetBatching], list[str]]:
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
        notes.append("each level: triton and frontend measured in ABBA order over two halves of the same seeds; "
                     "frontend overhead = frontend p50 / triton p50 - 1 at that concurrency")

        probe = StatsProbe(triton.client, pipeline, component)
        results: list[LevelResult] = []
        batching: list[UnetBatching] = []
        overhead = unavailable(workload.steps, "concurrency 1 was not measured (--concurrency)")
        seeds = list(range(MEASURED_SEED, MEASURED_SEED + requests))
        halves = (seeds[: (requests + 1) // 2], seeds[(requests + 1) // 2:])
        paths: dict[str, TritonPath | FrontendPath] = {report.TRITON: triton, report.FRONTEND: frontend}
        for concurrency in levels:
            # ABBA (triton, frontend, frontend, triton; each half of the seeds): slow drift in the machine's
            # load, which a shared 2-core box has plenty of, hits both paths alike.
            runs: dict[str, list[LevelResult]] = {label: [] for label in paths}
            deltas = Snapshot()  # over the triton runs only
            for label, half in ((report.TRITON, 0), (report.FRONTEND, 0), (report.FRONTEND, 1), (report.TRITON, 1)):
                if not halves[half]:
                    continue
                if label == report.FRONTEND:
                    runs[label].append(await measure_async(paths[label].generate, halves[half], concurrency, label))
                    continue
                before = await probe.snapshot()
                runs[label].append(await measure_async(paths[label].generate, halves[half], concurrency, label))
                deltas = deltas + (await probe.settled(before, len(halves[half])) - before)
            batching.append(UnetBatching.from_deltas(concurrency, deltas[probe.unet]))
            for label, parts in runs.items():
                results.append(functools.reduce(operator.add, parts))
                if label == report.TRITON and concurrency == 1:
                    overhead = step_overhead(results[-1].latencies, workload.steps, deltas, pipeline, component)
                log.info("%s c=%d: %.2f img/s, p50 %.1f ms", label, concurrency, results[-1].throughput,
                         results[-1].percentile_ms(50))
        return results, overhead, batching, notes
    finally:
        await frontend.close()
        await triton.close()


def _unet_reference(model_dir: Path, spec: PipelineSpec, size: int) -> UnetReference | None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    threads = config.parameters["onnx_threads"].string_value if "onnx_threads" in config.parameters else "0"
    if not (model_dir / "1" / "model.onnx").is_file():  # a TensorRT plan: nothing to run on this side
        return None
    log.info("timing %s in-process (ONNX Runtime) for the UNet-math reference", model_dir.name)
    reference = UnetReference(model_dir, spec, size, int(threads))
    reference.measure()
    return reference


def _spec(repository: Path, model_dir: Path) -> PipelineSpec:
    spec_file = repository / f"{model_dir.name}_denoiser" / "1" / "pipeline.json"
    if not spec_file.is_file():
        raise SystemExit(f"{repository} has no pipeline '{model_dir.name}' (looked for {spec_file}); "
                         f"export {model_dir} into it first")
    return PipelineSpec.load(spec_file)


def _bench_pipeline(args: argparse.Namespace, servers: Any, repository: Path, model_dir: Path) -> None:
    """Diffusers in process, then Triton and the frontend, for one pipeline; prints its report."""
    spec = _spec(repository, model_dir)
    pipeline, component = model_dir.name, spec.denoiser_component
    levels = sorted(set(args.concurrency))
    workload = Workload(steps=args.steps, size=args.size or spec.limits.default_width,
                        guidance_scale=spec.limits.default_guidance_scale)
    load_before = _load()
    log.info("%s: load average before: %s; loading it in-process with diffusers", pipeline, load_before)
    diffusers = DiffusersPath(model_dir, workload)
    for seed in WARMUP_SEEDS[:2]:
        diffusers.generate(seed)
    baseline = diffusers.measure(range(MEASURED_SEED, MEASURED_SEED + args.requests), report.DIFFUSERS)
    log.info("diffusers: %.2f img/s, p50 %.1f ms", baseline.throughput, baseline.percentile_ms(50))
    reference = diffusers.generate(MEASURED_SEED)
    del diffusers
    unet = _unet_reference(repository / f"{pipeline}_{component}", spec, workload.size)
    served, overhead, batching, notes = asyncio.run(
        _served(servers, pipeline, component, workload, levels, args.requests, reference))
    if unet is not None:
        unet.measure()  # Triton idle again: a second sample, in case the first met a load spike

    results = [baseline, *served]
    found = report.targets(results, overhead)
    print(f"dgate bench: pipeline {pipeline} ({spec.family}), {workload.steps} steps, "
          f"{workload.size}x{workload.size}, guidance {workload.guidance_scale}, n=1, {args.requests} requests "
          f"per level (distinct seeds), {cpu_count()} CPU cores; load average (1/5/15 min) before {load_before}, "
          f"after {_load()}")
    for note in notes:
        print(note)
    print(report.table(results))
    for line in (report.step_lines(overhead, batching, unet.ms if unet is not None else None)
                 + report.target_lines(found)):
        print(line)
    print(flush=True)


def run_bench(args: argparse.Namespace) -> int:
    repository = Path(args.model_repository)
    model_dirs = [Path(model) for model in args.model or [Path("build/models/tiny-sd")]]
    for model_dir in model_dirs:
        _spec(repository, model_dir)  # every pipeline is there before anything starts
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dgate-bench-") as workdir, \
            start_servers(repository, Path(workdir)) as servers:
        for model_dir in model_dirs:  # one server start, every pipeline measured in the same run
            _bench_pipeline(args, servers, repository, model_dir)
        process = servers.triton.process
        if process is not None:  # every pipeline in the repository is loaded, not only the benchmarked ones
            print(format_footprint(tree_footprint(process.pid), title="Triton tree after the run"))
    return 0
