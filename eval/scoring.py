"""The metrics of each model's images: CLIP vs its prompts, FID vs the reference set, LPIPS/PSNR vs the
reference model's image for the same prompt and seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dgate.eval.config import EvalConfig
from dgate.eval.errors import EvalConfigError
from dgate.eval.generate import ModelRun
from dgate.eval.metrics import ClipScorer, FidScorer, LpipsScorer, check_weights_file, load_clip, load_fid, load_lpips
from dgate.eval.metrics import psnr as psnr_db

# Identical images have infinite PSNR; each image counts at most this much in a model's mean.
PSNR_CAP_DB = 100.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Scorers:
    """The loaded metric networks; None for a metric not selected. PSNR needs no weights."""

    clip: ClipScorer | None = None
    fid: FidScorer | None = None
    lpips: LpipsScorer | None = None
    psnr: bool = False


@dataclass(frozen=True)
class ModelScores:
    """One model's means (None: not computed) and its per-image values (in prompt order)."""

    clip_score: float | None = None
    fid: float | None = None
    lpips: float | None = None
    psnr: float | None = None
    per_image: dict[str, list[float]] = field(default_factory=dict)  # "clip_score" | "lpips" | "psnr" -> values


def check_metric_flags(config: EvalConfig) -> None:
    """Every selected metric has its weights flag and a readable file: checked before any image is made."""
    paths = {"clip": config.clip_weights, "fid": config.inception_weights, "lpips": config.lpips_weights}
    for metric in ("clip", "fid", "lpips"):
        if metric in config.metrics:
            check_weights_file(paths[metric], metric, config.clip_arch)
    if config.reference_images is not None and "fid" in config.metrics:
        count = len(reference_image_files(config.reference_images))
        if count < 2:
            raise EvalConfigError(f"--reference-images {config.reference_images}: FID needs at least 2 images "
                                  f"({', '.join(IMAGE_SUFFIXES)}), found {count}")


def load_scorers(config: EvalConfig) -> Scorers:
    """Load the selected metrics' networks (slow: seconds); each failure is a MetricWeightsError."""
    selected = config.metrics
    return Scorers(
        clip=load_clip(config.clip_weights, config.clip_arch, config.device) if "clip" in selected else None,
        fid=load_fid(config.inception_weights, config.device) if "fid" in selected else None,
        lpips=load_lpips(config.lpips_weights, config.device) if "lpips" in selected else None,
        psnr="psnr" in selected,
    )


def reference_image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise EvalConfigError(f"--reference-images {directory}: not a directory")
    return sorted(path for path in directory.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def score_runs(runs: Sequence[ModelRun], scorers: Scorers, reference_images: Path | None = None) -> list[ModelScores]:
    """Scores per run, in order. `runs[0]` is the reference model: its own LPIPS, PSNR and (without
    `reference_images`) FID are None, since they would compare it with itself."""
    reference_run = runs[0]
    reference = load_images([image.path for image in reference_run.images])
    if scorers.fid is not None:
        real = load_images(reference_image_files(reference_images)) if reference_images is not None else reference
        scorers.fid.set_reference(real)
    scores = []
    for position, run in enumerate(runs):
        images = reference if position == 0 else load_images([image.path for image in run.images])
        per_image: dict[str, list[float]] = {}
        if scorers.clip is not None:
            per_image["clip_score"] = scorers.clip.scores(images, [image.prompt for image in run.images])
        fid = None
        if scorers.fid is not None and (position > 0 or reference_images is not None):
            fid = scorers.fid.fid(images)
        if position > 0:
            if scorers.lpips is not None:
                per_image["lpips"] = scorers.lpips.distances(images, reference)
            if scorers.psnr:
                per_image["psnr"] = [min(psnr_db(image, ref), PSNR_CAP_DB)
                                     for image, ref in zip(images, reference, strict=True)]
        scores.append(ModelScores(
            clip_score=_mean(per_image.get("clip_score", [])), fid=fid, lpips=_mean(per_image.get("lpips", [])),
            psnr=_mean(per_image.get("psnr", [])), per_image=per_image,
        ))
    return scores
