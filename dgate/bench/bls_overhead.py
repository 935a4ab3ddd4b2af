"""What a denoising step costs through Triton (BLS) against the same UNet engine called in process.

`python -m dgate.bench.bls_overhead --model <diffusers dir>` exports the pipeline (the default async
design, ONNX Runtime) into a scratch repository, serves it, and takes the per-step cost through
tritonserver as the slope of the median latency between a short and a long run at concurrency 1;
then it times the exported UNet engine alone, in this process, on the same shapes. The difference is
what the BLS design costs a step (the BLS round trip, the scheduler step, Triton's queues).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _median_latency(client: Any, grpc_module: Any, pipeline: str, steps: int, size: int, runs: int) -> float:
    from dgate.core.tensors import infer_inputs

    values = {"prompt": "a red fox in the snow", "negative_prompt": "", "num_images": 1, "num_inference_steps": steps,
              "guidance_scale": 7.5, "height": size, "width": size, "scheduler": "default",
              "max_sequence_length": 0, "true_cfg_scale": 1.0, "lora": ""}
    times = []
    results: list[Any] = []
    for seed in range(runs + 1):  # the first run warms up
        results.clear()
        client.start_stream(callback=lambda result, error: results.append(error or result))
        start = time.perf_counter()
        client.async_stream_infer(pipeline, infer_inputs(grpc_module, values | {"seed": seed}))
        client.stop_stream()
        if any(isinstance(result, Exception) for result in results):
            raise RuntimeError(f"{pipeline}: {next(r for r in results if isinstance(r, Exception))}")
        if seed:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: Path, workdir: Path, steps: tuple[int, int] = (4, 24), size: int = 64, runs: int = 6,
            threads: int = 2) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    from dgate.core.engines import Placement, load_engine
    from dgate.core.families import family_of
    from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec
    from dgate.export.pipeline_export import export_pipeline
    from dgate.export.triton_config import ServingOptions
    from dgate.triton_server import TritonServer, free_ports

    repository = workdir / "repository"
    report = export_pipeline(str(model), repository, options=ServingOptions(onnx_threads=threads))
    pipeline = report.spec.name
    with TritonServer(repository, free_ports(), log_path=workdir / "tritonserver.log") as server:
        client = grpcclient.InferenceServerClient(server.ports.grpc_url)
        short, long = (_median_latency(client, grpcclient, pipeline, n, size, runs) for n in steps)
        client.close()
    served_step = (long - short) / (steps[1] - steps[0])

    spec = report.spec
    component = spec.denoiser_component
    version = repository / f"{pipeline}_{component}" / "1"
    engine = load_engine("onnxruntime", version, PipelineSpec.load(version / PIPELINE_FILE)
                         if (version / PIPELINE_FILE).is_file() else None, component, Placement(), threads)
    rng = np.random.default_rng(0)
    inputs = {tensor.name: rng.standard_normal(_shape(tensor, spec, size)).astype(np.float32)
              for tensor in family_of(spec).denoiser_inputs(spec)}
    for _ in range(5):
        engine.run(inputs)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        engine.run(inputs)
        times.append(time.perf_counter() - start)
    engine_step = statistics.median(times)
    return {"served_ms_per_step": served_step * 1e3, "engine_ms_per_step": engine_step * 1e3,
            "overhead_ms_per_step": (served_step - engine_step) * 1e3, "short_s": short, "long_s": long}


def _shape(tensor: Any, spec: Any, size: int) -> tuple[int, ...]:
    """One CFG batch (2 rows) of the tensor at `size`: latent axes from the VAE factor, the rest as declared."""
    latent = size // spec.vae_scale_factor
    dims = [latent if dim == -1 else dim for dim in tensor.dims]
    return (2, *dims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgate.bench.bls_overhead", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a diffusers pipeline directory (a UNet family)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, served and in process")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dgate-bls-") as workdir:
        figures = measure(args.model, Path(workdir), size=args.size, runs=args.runs, threads=args.threads)
    print(f"through tritonserver: {figures['served_ms_per_step']:.2f} ms per step "
          f"(median latency {figures['short_s'] * 1e3:.0f} ms at 4 steps, {figures['long_s'] * 1e3:.0f} ms at 24)")
    print(f"the UNet engine alone, in process: {figures['engine_ms_per_step']:.2f} ms per step")
    print(f"per-step cost of the BLS design: {figures['overhead_ms_per_step']:.2f} ms "
          f"({figures['overhead_ms_per_step'] / figures['engine_ms_per_step'] * 100:.0f}% of the UNet's step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
