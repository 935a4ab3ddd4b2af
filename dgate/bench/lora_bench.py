"""`dgate bench-lora`: adapter switch latency vs a Triton model reload, and mixed- vs single-adapter
throughput, in one run against one tritonserver (started in explicit model-control mode)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dgate.bench.workload import LevelResult, TritonPath, Workload, measure_async
from dgate.core.lora.request import LORA_DIR_ENV, AdapterRef, encode_adapters
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import LORA_INPUT

ADAPTERS = ("bench-a", "bench-b", "bench-c")


def _ms(values: list[float]) -> str:
    array = np.asarray(values) * 1000
    return f"median {np.median(array):7.2f} ms, p95 {np.percentile(array, 95):7.2f} ms"


def _unet_inputs(spec: PipelineSpec, size: int) -> dict[str, np.ndarray]:
    from dgate.export.onnx_export import sample_inputs

    return {k: v.numpy() for k, v in sample_inputs(spec, spec.denoiser_component, 2, size, size, seed=0).items()}


def _timed_unet_calls(client: Any, model: str, inputs: dict[str, np.ndarray], loras: list[str]) -> list[float]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    times = []
    for lora in loras:
        tensors = []
        rows = np.array([[lora.encode()]] * len(inputs["sample"]), dtype=np.object_)
        for name, array in (inputs | {LORA_INPUT: rows}).items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        start = time.perf_counter()
        client.infer(model, tensors)
        times.append(time.perf_counter() - start)
    return times


def _in_process_switches(spec: PipelineSpec, repository: Path, loras: list[str], rounds: int) -> list[float]:
    """The weight switch alone (ComponentAdapters, the code the component model runs)."""
    from dgate.core.lora.serving import ComponentAdapters
    from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap

    version = repository / f"{spec.name}_{spec.denoiser_component}" / "1"
    adapters = ComponentAdapters(spec, spec.denoiser_component, version / "model.onnx",
                                 LoraMap.load(version / LORA_MAP_FILE), threads=1)
    times = []
    for index in range(rounds * len(loras) + 1):
        key, deltas = adapters.resolve(loras[index % len(loras)])  # cached after the first round
        start = time.perf_counter()
        adapters.session_for(key, deltas)
        if index:  # the first call builds the refittable session
            times.append(time.perf_counter() - start)
    return times


async def _throughput(url: str, pipeline: str, workload: Workload, loras: list[str], requests: int,
                      concurrency: int) -> LevelResult:
    paths = [TritonPath(url, pipeline, Workload(workload.steps, workload.size, lora=lora)) for lora in loras]
    for path in paths:
        await path.open()
    try:
        return await measure_async(lambda seed: paths[seed % len(paths)].generate(seed), list(range(requests)),
                                   concurrency, f"{len(loras)} adapter set(s)")
    finally:
        for path in paths:
            await path.close()


def run_lora_bench(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="dgate-bench-loras-"))
    previous = os.environ.get(LORA_DIR_ENV)
    os.environ[LORA_DIR_ENV] = str(directory)  # read by the tritonserver started below
    try:
        return _run(args, directory)
    finally:
        if previous is None:
            os.environ.pop(LORA_DIR_ENV, None)
        else:
            os.environ[LORA_DIR_ENV] = previous


def _run(args: argparse.Namespace, directory: Path) -> int:
    from dgate.tiny_lora import random_lora
    from dgate.triton_server import TritonServer, free_ports

    model_dir: Path = args.model
    spec = PipelineSpec.load(args.model_repository / f"{model_dir.name}_denoiser" / "1" / "pipeline.json")
    for seed, name in enumerate(ADAPTERS):
        random_lora(model_dir, directory / f"{name}.safetensors", seed=seed, text_encoder=True)
    loras = [encode_adapters([AdapterRef(f"{name}.safetensors", 1.0)]) for name in ADAPTERS]

    print(f"dgate bench-lora: {spec.name}, {args.steps} steps at {args.size}px, {os.cpu_count()} cores")
    switch = _in_process_switches(spec, args.model_repository, loras, args.rounds)
    print(f"weight switch in process ({spec.denoiser_component}, {len(switch)} switches): {_ms(switch)}")

    import tritonclient.grpc as grpcclient

    server = TritonServer(args.model_repository, free_ports(), log_path=directory / "tritonserver.log",
                          extra_args=["--model-control-mode=explicit", "--load-model=*"])
    with server:
        client = grpcclient.InferenceServerClient(server.ports.grpc_url)
        unet = f"{spec.name}_{spec.denoiser_component}"
        inputs = _unet_inputs(spec, args.size)
        _timed_unet_calls(client, unet, inputs, loras + loras)  # warm: adapters read and cached
        same: list[float] = []
        switching: list[float] = []
        base: list[float] = []
        for _ in range(args.rounds):  # interleaved, so load changes hit all alike
            base += _timed_unet_calls(client, unet, inputs, [""] * 2)
            same += _timed_unet_calls(client, unet, inputs, [loras[0]] * 3)[1:]  # 1st may switch
            switching += _timed_unet_calls(client, unet, inputs, loras[1:] + loras[:1])
        reloads = []
        config = client.get_model_config(unet, as_json=True)["config"]
        for index in range(args.reloads):
            # What switching by reloading the model would cost. A changed config forces the reload
            # (loading an unchanged, loaded model is a no-op); load_model returns once it is ready.
            config.setdefault("parameters", {})["bench_reload"] = {"string_value": str(index)}
            start = time.perf_counter()
            client.load_model(unet, config=json.dumps(config))
            reloads.append(time.perf_counter() - start)
            _timed_unet_calls(client, unet, inputs, [""])
        switch_cost = float(np.median(switching) - np.median(same))
        print(f"{unet} call, no adapter:        {_ms(base)}  (the fully optimised session)")
        print(f"{unet} call, same adapter:      {_ms(same)}  (the refittable session)")
        print(f"{unet} call, adapter switching: {_ms(switching)}  -> switch costs {switch_cost * 1000:.2f} ms")
        print(f"{unet} reload (explicit load):  {_ms(reloads)}")
        print(f"switch / reload: 1/{np.median(reloads) / float(np.median(switch)):.0f} (the weight switch); a whole "
              f"UNet call with a switch / reload: 1/{np.median(reloads) / float(np.median(switching)):.0f}")
        workload = Workload(args.steps, args.size)
        single, mixed = asyncio.run(_both(server.ports.grpc_url, spec.name, workload, loras, args))
        print(f"concurrency {args.concurrency}, {args.requests} requests x 2 halves (ABBA):")
        print(f"  single adapter: {single.throughput:6.2f} img/s, p50 {single.percentile_ms(50):7.1f} ms")
        print(f"  3 adapter sets: {mixed.throughput:6.2f} img/s, p50 {mixed.percentile_ms(50):7.1f} ms")
        print(f"  mixed / single throughput: {mixed.throughput / single.throughput:.2f}")
        client.close()
    return 0


async def _both(url: str, pipeline: str, workload: Workload, loras: list[str], args: argparse.Namespace
                ) -> tuple[LevelResult, LevelResult]:
    half = args.requests // 2
    await _throughput(url, pipeline, workload, loras, args.concurrency * 2, args.concurrency)  # warm-up
    a1 = await _throughput(url, pipeline, workload, loras[:1], half, args.concurrency)
    b1 = await _throughput(url, pipeline, workload, loras, half, args.concurrency)
    b2 = await _throughput(url, pipeline, workload, loras, half, args.concurrency)
    a2 = await _throughput(url, pipeline, workload, loras[:1], half, args.concurrency)
    return a1 + a2, b1 + b2
