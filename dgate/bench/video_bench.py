"""`dgate bench-video`: frames per second of served video against the diffusers pipeline, one run.

The diffusers baseline runs the exported checkpoint in this process, serially (one video at a time,
all cores). The served path is the frontend's own `TritonEngine.generate_video` (Triton's gRPC
stream: progress per step, then the frames) at each concurrency; every served video of the first
request is also compared with the diffusers frames for the same seed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dgate.core.params import DEFAULT_MOTION_BUCKET_ID, DEFAULT_NOISE_AUG_STRENGTH, GenerationParams
from dgate.triton_server import TritonServer, free_ports


@dataclass(frozen=True)
class VideoLevel:
    path: str
    concurrency: int
    videos: int
    frames: int
    seconds: float
    latencies_s: tuple[float, ...]

    @property
    def fps(self) -> float:
        return self.videos * self.frames / self.seconds


def _values(args: argparse.Namespace, limits: Any, seed: int) -> dict[str, Any]:
    return {"prompt": "a paper boat on a river", "negative_prompt": "", "num_images": 1,
            "num_inference_steps": args.steps, "guidance_scale": limits.default_guidance_scale, "seed": seed,
            "height": args.size, "width": args.size, "scheduler": "default", "max_sequence_length": 0,
            "true_cfg_scale": 1.0, "num_frames": args.frames, "fps": limits.default_fps,
            "motion_bucket_id": DEFAULT_MOTION_BUCKET_ID, "noise_aug_strength": DEFAULT_NOISE_AUG_STRENGTH,
            "decode_chunk_size": 0}


def _image(size: int) -> np.ndarray:
    return (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)


def _diffusers(model_dir: Path, args: argparse.Namespace, limits: Any, takes_image: bool
               ) -> tuple[VideoLevel, np.ndarray]:
    from diffusers import DiffusionPipeline

    from dgate.reference import diffusers_video

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    image = _image(args.size) if takes_image else None
    diffusers_video(pipe, _values(args, limits, 0), image)  # warm-up
    latencies, first = [], None
    start = time.perf_counter()
    for seed in tqdm(range(args.requests), desc=f"diffusers {model_dir.name}", unit="video"):
        t0 = time.perf_counter()
        frames = diffusers_video(pipe, _values(args, limits, seed), image)
        latencies.append(time.perf_counter() - t0)
        first = frames[0] if first is None else first
    total = time.perf_counter() - start
    assert first is not None
    return VideoLevel("diffusers", 1, args.requests, args.frames, total, tuple(latencies)), first


async def _served(grpc_url: str, name: str, args: argparse.Namespace, concurrency: int
                  ) -> tuple[VideoLevel, np.ndarray]:
    from dgate.frontend.engine import TritonEngine

    engine = TritonEngine(grpc_url, request_timeout_s=3600)
    pipeline = await engine.served_pipeline(name)
    limits = pipeline.limits
    image = _image(args.size) if pipeline.capabilities.takes_image else None
    semaphore = asyncio.Semaphore(concurrency)
    first: dict[int, np.ndarray] = {}

    async def one(seed: int) -> float:
        async with semaphore:
            t0 = time.perf_counter()
            frames = await engine.generate_video(name, GenerationParams(**_values(args, limits, seed)), image)
            if seed == 0:
                first[0] = frames
            return time.perf_counter() - t0

    await one(0)  # warm-up (sessions, first BLS)
    start = time.perf_counter()
    latencies = await asyncio.gather(*(one(seed) for seed in range(args.requests)))
    total = time.perf_counter() - start
    await engine.close()
    return VideoLevel("triton", concurrency, args.requests, args.frames, total, tuple(latencies)), first[0]


def _table(name: str, levels: list[VideoLevel], max_diff: int) -> str:
    baseline = levels[0].fps
    rows = [("path", "concurrency", "frames/s", "p50 s/video", "vs diffusers")]
    for level in levels:
        rows.append((level.path, str(level.concurrency), f"{level.fps:.2f}",
                     f"{statistics.median(level.latencies_s):.2f}", f"{level.fps / baseline:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([f"## {name}: served frames vs diffusers (max pixel difference {max_diff}/255)", *lines])


def run_video_bench(args: argparse.Namespace) -> int:
    from dgate.frontend.engine import TritonEngine

    names = [Path(model).name for model in args.model]
    with tempfile.TemporaryDirectory(prefix="dgate-bench-video-") as workdir, \
            TritonServer(args.model_repository, free_ports(), log_path=Path(workdir) / "tritonserver.log") as triton:
        for model_dir, name in zip(args.model, names, strict=True):
            pipeline = asyncio.run(_pipeline(TritonEngine(triton.ports.grpc_url, request_timeout_s=60), name))
            baseline, expected = _diffusers(Path(model_dir), args, pipeline.limits, pipeline.capabilities.takes_image)
            levels, max_diff = [baseline], 0
            for concurrency in args.concurrency:
                level, served = asyncio.run(_served(triton.ports.grpc_url, name, args, concurrency))
                levels.append(level)
                max_diff = max(max_diff, int(np.abs(served.astype(int) - expected.astype(int)).max()))
            print(f"{args.frames} frames at {args.size}x{args.size}, {args.steps} steps, {args.requests} videos "
                  "per row; frames/s = videos x frames / wall time")
            print(_table(name, levels, max_diff))
    return 0


async def _pipeline(engine: Any, name: str) -> Any:
    try:
        return await engine.served_pipeline(name)
    finally:
        await engine.close()
