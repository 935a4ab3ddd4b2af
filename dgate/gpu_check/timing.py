"""Wall-clock timing that waits for the GPU: CUDA kernels run asynchronously from the host."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable[[], T], device: str) -> tuple[float, T]:
    """(seconds, result) of one call, the device idle before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def median_seconds(function: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        timed(function, device)
    return statistics.median(timed(function, device)[0] for _ in range(repeats))
