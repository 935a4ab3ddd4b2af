"""Frame interpolation for `interpolate: 2|4`: more frames per second over the same motion.

The default interpolator is classical dense optical flow (OpenCV's Farneback), torch-free and
weight-free. A learned one (RIFE, FILM, ... with user-supplied weights) fits the `FrameInterpolator`
protocol and can be passed to `interpolate_frames` instead.
"""

from __future__ import annotations

import math
from typing import Protocol

import cv2
import numpy as np

FACTORS = (1, 2, 4)


class FrameInterpolator(Protocol):
    """Synthesises the frame at time `t` in (0, 1) between consecutive frames `a` (t=0) and `b` (t=1).

    `a` and `b` are uint8 RGB `[H, W, 3]`; the result has the same shape and dtype.
    `interpolate_frames` calls it with the same `a` and `b` objects for every `t` of one pair, so an
    implementation may cache per-pair work (the flow fields, a learned model's features) by identity.
    """

    def __call__(self, a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray: ...


class FarnebackInterpolator:
    """Bidirectional Farneback flow, backward warping with `cv2.remap`, and a time-weighted blend.

    With `F_ab` the flow from a to b (`a(x) ~ b(x + F_ab(x))`) and `F_ba` the flow from b to a:

        I_t(x) = (1 - t) * a(x - t * F_ab(x)) + t * b(x - (1 - t) * F_ba(x))

    i.e. a is carried forward by t of its motion, b back by (1 - t) of its motion, and the one
    nearer in time weighs more. The flow is read at the target pixel rather than the source (the
    usual backward-warping approximation); Farneback's flow is smooth, so for the short motions
    between consecutive generated frames this holds. No occlusion reasoning is attempted: where
    the flow is wrong (disocclusions, fast thin objects) the two warps disagree and ghosting shows.

    Not thread-safe: it caches the flows of the last pair, so use one instance per thread.
    """

    def __init__(self) -> None:
        self._pair: tuple[np.ndarray, np.ndarray] | None = None
        self._flows: tuple[np.ndarray, np.ndarray] | None = None
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _flow(source: np.ndarray, target: np.ndarray, levels: int) -> np.ndarray:
        # The output array is passed in (not None) only to satisfy OpenCV's stubs; without
        # OPTFLOW_USE_INITIAL_FLOW its contents are not read.
        flow = np.zeros((*source.shape, 2), np.float32)
        return cv2.calcOpticalFlowFarneback(
            source, target, flow, pyr_scale=0.5, levels=levels, winsize=15, iterations=3, poly_n=5,
            poly_sigma=1.2, flags=0,
        )

    def _pair_flows(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The references are held with the flows, so an identity match cannot be a recycled id().
        if self._pair is None or self._pair[0] is not a or self._pair[1] is not b or self._flows is None:
            gray_a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
            gray_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            # Pyramid down to ~16-32 px at the coarsest level: each level halves the motion, so large
            # motions at high resolution are still found within the 15 px windows.
            levels = min(6, max(3, int(math.log2(min(a.shape[:2]) / 16))))
            self._flows = (self._flow(gray_a, gray_b, levels), self._flow(gray_b, gray_a, levels))
            self._pair = (a, b)
        return self._flows

    def _coordinates(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid is None or self._grid[0].shape != (height, width):
            ys, xs = np.indices((height, width), dtype=np.float32)
            self._grid = (xs, ys)
        return self._grid

    def __call__(self, a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
        flow_ab, flow_ba = self._pair_flows(a, b)
        xs, ys = self._coordinates(*a.shape[:2])
        warped_a = cv2.remap(
            a, xs - t * flow_ab[..., 0], ys - t * flow_ab[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        warped_b = cv2.remap(
            b, xs - (1 - t) * flow_ba[..., 0], ys - (1 - t) * flow_ba[..., 1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        blend = cv2.addWeighted(warped_a, 1.0 - t, warped_b, t, 0.0, dtype=cv2.CV_32F)
        return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or factor not in FACTORS:
        raise ValueError(f"interpolation factor must be one of {FACTORS}, got {factor!r}")


def interpolate_frames(
    frames: np.ndarray, factor: int, interpolator: FrameInterpolator | None = None
) -> np.ndarray:
    """`[F, H, W, 3]` uint8 -> `[(F - 1) * factor + 1, H, W, 3]`: `factor - 1` frames between each pair.

    The originals are kept bit-exact at indices `k * factor`; the frames between originals k and
    k+1 are `interpolator(frames[k], frames[k + 1], j / factor)` for j = 1..factor-1. Nothing is
    added after the last frame, which has no successor to move towards. `interpolator` defaults to
    a fresh `FarnebackInterpolator` (fresh, so concurrent calls share no cache). Factor 1 returns a
    copy of the input.
    """
    _check_factor(factor)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = list(frames.shape) if isinstance(frames, np.ndarray) else type(frames).__name__
        dtype = frames.dtype if isinstance(frames, np.ndarray) else None
        raise ValueError(f"frames must be a uint8 array of shape [F, H, W, 3], got {shape} {dtype}")
    count = len(frames)
    if factor == 1 or count < 2:
        return frames.copy()
    if interpolator is None:
        interpolator = FarnebackInterpolator()
    out = np.empty(((count - 1) * factor + 1, *frames.shape[1:]), np.uint8)
    out[::factor] = frames
    for k in range(count - 1):
        a, b = np.ascontiguousarray(frames[k]), np.ascontiguousarray(frames[k + 1])
        for j in range(1, factor):
            out[k * factor + j] = interpolator(a, b, j / factor)
    return out


def output_fps(fps: float, factor: int) -> float:
    """The frame rate of an interpolated clip: `fps * factor`, so the motion keeps its speed.

    Original frame k is shown at k/fps before and after interpolation. F frames at `fps` last
    F/fps; the (F - 1) * factor + 1 frames at `fps * factor` last
    ((F - 1) * factor + 1) / (fps * factor) = (F - 1)/fps + 1/(fps * factor), i.e. the clip is
    shorter by (factor - 1)/(fps * factor), less than one original frame (the last frame is shown
    for 1/(fps * factor) instead of 1/fps).
    """
    _check_factor(factor)
    return fps * factor
