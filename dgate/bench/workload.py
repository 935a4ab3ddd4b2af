"""The benchmark's requests and the three ways of sending them (diffusers, Triton, frontend)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dgate.core.tensors import (
    ENSEMBLE_OUTPUT,
    PARTIAL_INDEX_OUTPUT,
    PARTIAL_OUTPUT,
    PROGRESS_OUTPUT,
    STEPS_OUTPUT,
    infer_inputs,
    request_tensors,
)

STREAMED_OUTPUTS = (PROGRESS_OUTPUT.name, STEPS_OUTPUT.name, PARTIAL_OUTPUT.name, PARTIAL_INDEX_OUTPUT.name)

PROMPT = "a photo of a red fox in the snow, high quality"


@dataclass(frozen=True)
class Workload:
    """One image request (n=1); only the seed changes from request to request."""

    steps: int
    size: int
    prompt: str = PROMPT
    guidance_scale: float = 7.5
    lora: str = ""  # the `lora` ensemble input (`dgate bench lora` sends adapters)

    def ensemble_values(self, seed: int) -> dict[str, Any]:
        return {"prompt": self.prompt, "negative_prompt": "", "num_images": 1,
                "num_inference_steps": self.steps, "guidance_scale": self.guidance_scale, "seed": seed,
                "height": self.size, "width": self.size, "scheduler": "default", "max_sequence_length": 0,
                "true_cfg_scale": 1.0, "lora": self.lora}


@dataclass(frozen=True)
class LevelResult:
    """Latencies (s) of `len(latencies)` requests sent `concurrency` at a time, in `wall_s` seconds."""

    path: str
    concurrency: int
    latencies: tuple[float, ...]
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s

    def __add__(self, other: LevelResult) -> LevelResult:
        """Two runs of the same level pooled: all latencies, throughput over both walls."""
        return LevelResult(self.path, self.concurrency, self.latencies + other.latencies, self.wall_s + other.wall_s)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), q)) * 1000.0


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DiffusersPath:
    """The plain diffusers pipeline in this process, one request at a time (torch threads = cores)."""

    def __init__(self, model_dir: Path, workload: Workload) -> None:
        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(cpu_count())
        self.workload = workload
        self.pipe = DiffusionPipeline.from_pretrained(str(model_dir))
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, seed: int) -> np.ndarray:
        from dgate.reference import diffusers_images

        return diffusers_images(self.pipe, self.workload.ensemble_values(seed))

    def measure(self, seeds: Sequence[int], label: str = "diffusers") -> LevelResult:
        latencies = []
        start = time.perf_counter()
        for seed in tqdm(seeds, desc=f"{label} c=1", leave=False, unit="img"):
            t0 = time.perf_counter()
            self.generate(seed)
            latencies.append(time.perf_counter() - t0)
        return LevelResult(label, 1, tuple(latencies), time.perf_counter() - start)


class TritonPath:
    """The pipeline's ensemble through tritonclient's gRPC asyncio client (one HTTP/2 channel)."""

    def __init__(self, url: str, pipeline: str, workload: Workload, extra: dict[str, Any] | None = None) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.module, self.url, self.pipeline, self.workload = grpcclient, url, pipeline, workload
        self.extra = extra or {}  # more ensemble inputs (a streaming request's partial_images, stream_progress)
        self.client: Any = None
        self.streams = False

    async def open(self) -> None:
        self.client = self.module.InferenceServerClient(self.url)
        config = (await self.client.get_model_config(self.pipeline, as_json=True))["config"]
        # The async denoiser design is decoupled: its ensemble answers gRPC streams only.
        self.streams = config.get("parameters", {}).get("streams", {}).get("string_value") == "True"

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def generate(self, seed: int) -> np.ndarray:
        inputs = infer_inputs(self.module, self.workload.ensemble_values(seed) | self.extra,
                              tensors=request_tensors("image"))
        names = (ENSEMBLE_OUTPUT.name, *(STREAMED_OUTPUTS if self.extra else ()))
        outputs = [self.module.InferRequestedOutput(name) for name in names]
        if not self.streams:
            result = await self.client.infer(self.pipeline, inputs, outputs=outputs)
            return result.as_numpy(ENSEMBLE_OUTPUT.name)

        async def requests() -> Any:
            yield {"model_name": self.pipeline, "inputs": inputs, "outputs": outputs}

        async for result, error in self.client.stream_infer(requests()):
            if error is not None:
                raise error
            images = result.as_numpy(ENSEMBLE_OUTPUT.name)
            if images is not None:
                return images
        raise RuntimeError(f"{self.pipeline} ended the stream without images")


class FrontendPath:
    """`POST /v1/images/generations` through the official `openai` client (AsyncOpenAI, no retries)."""

    def __init__(self, base_url: str, pipeline: str, workload: Workload) -> None:
        try:
            from openai import AsyncOpenAI
        except ImportError as error:  # the client is a test/bench extra, not a serving dependency
            raise SystemExit("dgate bench needs the `openai` client: pip install 'dgate[test]'") from error
        self.client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="dgate-bench", max_retries=0, timeout=300)
        self.pipeline, self.workload = pipeline, workload

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        await self.client.close()

    async def generate(self, seed: int) -> np.ndarray:
        from PIL import Image

        w = self.workload
        response = await self.client.images.generate(
            model=self.pipeline, prompt=w.prompt, n=1, size=f"{w.size}x{w.size}", response_format="b64_json",
            extra_body={"seed": seed, "num_inference_steps": w.steps, "guidance_scale": w.guidance_scale},
        )
        data = response.data or []
        if not data or data[0].b64_json is None:
            raise RuntimeError("the frontend answered without a b64_json image")
        png = base64.b64decode(data[0].b64_json)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[None]


async def measure_async(generate: Callable[[int], Awaitable[Any]], seeds: Sequence[int], concurrency: int,
                        label: str) -> LevelResult:
    """Send `seeds` through `generate`, keeping `concurrency` requests in flight (closed loop)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seed in seeds:
        queue.put_nowait(seed)
    latencies: list[float] = []
    bar = tqdm(total=len(seeds), desc=f"{label} c={concurrency}", leave=False, unit="img")

    async def worker() -> None:
        while True:
            try:
                seed = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            await generate(seed)
            latencies.append(time.perf_counter() - t0)
            bar.update()

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        bar.close()
    return LevelResult(label, concurrency, tuple(latencies), time.perf_counter() - start)
