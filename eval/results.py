"""What `run_eval` returns: one row per model and the paths of everything it wrote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelRow:
    """One model's line of the report. A metric not selected (or not defined, see below) is None.

    `reference` is True for the first listed model: its `lpips`, `psnr` and (without
    --reference-images) `fid` are None, since they would compare it with itself.
    """

    model: str
    precision: str  # the server's `precision` field, a --label override, or "unknown"
    images: int
    clip_score: float | None  # mean of 100 * max(cos(image, prompt), 0), 0..100
    fid: float | None  # against the reference set (the reference model's images or --reference-images)
    lpips: float | None  # mean LPIPS vs the reference model's image for the same prompt and seed
    psnr: float | None  # mean PSNR (dB) vs the same reference images; identical images count 100 dB
    latency_ms_mean: float  # wall clock per request
    latency_ms_p95: float
    throughput_ips: float  # images / wall time of this model's whole run
    reference: bool = False
    denoiser_mb: float | None = None  # UNet/transformer files on disk (with --model-repository)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    """Everything one `run_eval` wrote; `rows` are in the order of `EvalConfig.models`."""

    rows: tuple[ModelRow, ...]
    out: Path
    results_json: Path
    results_md: Path
    plots: Mapping[str, Path]  # "quality_vs_precision" | "latency_vs_precision" -> PNG
    grids: tuple[Path, ...]  # grids/prompt_<index:04d>.png, one per prompt
    images_dir: Path  # images/<model>/<index:04d>.png
    wandb_dir: Path | None  # the W&B run folder (out/wandb/offline-run-*), None without W&B
    notes: tuple[str, ...] = field(default_factory=tuple)  # reference, weights and caveat lines of the report

    def row(self, model: str) -> ModelRow:
        for row in self.rows:
            if row.model == model:
                return row
        raise KeyError(model)
