"""results.json, results.md and the PNG figures of one evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgate.eval.generate import ModelRun
from dgate.eval.plots import plot_latency, plot_quality, write_grids
from dgate.eval.results import ModelRow
from dgate.eval.scoring import ModelScores

TABLE_COLUMNS = ("model", "precision", "images", "CLIP score", "FID", "LPIPS vs ref", "PSNR vs ref (dB)",
                 "mean latency (ms)", "p95 latency (ms)", "throughput (images/s)", "denoiser size (MB)")


@dataclass(frozen=True)
class ReportFiles:
    results_json: Path
    results_md: Path
    plots: dict[str, Path]
    grids: tuple[Path, ...]


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: they become null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: float | None, fmt: str, reference: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "ref" if reference else "—"
    return format(value, fmt)


def table_rows(rows: Sequence[ModelRow]) -> list[list[str]]:
    """The report table as text cells ("ref": the reference model itself; "—": not computed)."""
    return [[
        row.model, row.precision, str(row.images), _cell(row.clip_score, ".2f"),
        _cell(row.fid, ".2f", row.reference), _cell(row.lpips, ".4f", row.reference),
        _cell(row.psnr, ".2f", row.reference), _cell(row.latency_ms_mean, ".1f"), _cell(row.latency_ms_p95, ".1f"),
        _cell(row.throughput_ips, ".3f"), _cell(row.denoiser_mb, ".2f"),
    ] for row in rows]


def write_results_json(path: Path, rows: Sequence[ModelRow], runs: Sequence[ModelRun],
                       scores: Sequence[ModelScores], header: Mapping[str, Any], notes: Sequence[str]) -> Path:
    """The table's numbers plus every image: its prompt, seed, file, latency and per-image scores."""
    images: dict[str, list[dict[str, Any]]] = {}
    for run, score in zip(runs, scores, strict=True):
        images[run.model] = [
            {"index": image.index, "prompt": image.prompt, "seed": image.seed,
             "path": str(image.path.relative_to(path.parent)) if image.path.is_relative_to(path.parent)
             else str(image.path),
             "latency_ms": image.latency_s * 1000.0,
             **{key: values[position] for key, values in score.per_image.items()}}
            for position, image in enumerate(run.images)
        ]
    document = {"header": dict(header), "notes": list(notes), "rows": [row.as_dict() for row in rows],
                "images": images}
    path.write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")
    return path


def write_results_md(path: Path, rows: Sequence[ModelRow], header: Mapping[str, Any], notes: Sequence[str],
                     plots: Mapping[str, Path], grid_count: int) -> Path:
    lines = ["# dgate eval", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if value is not None]
    lines += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    lines += [""] + [f"- {note}" for note in notes]
    lines += ["", *(f"![{name}]({plot.relative_to(path.parent)})" for name, plot in plots.items())]
    if grid_count:
        lines += ["", f"Image grids, one per prompt: `grids/prompt_<index>.png` ({grid_count} files)."]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_report(out: Path, rows: Sequence[ModelRow], runs: Sequence[ModelRun], scores: Sequence[ModelScores],
                 header: Mapping[str, Any], notes: Sequence[str]) -> ReportFiles:
    """Everything under `out`: results.json, results.md, the two plots and grids/prompt_<index:04d>.png."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "quality_vs_precision": plot_quality(rows, out / "quality_vs_precision.png"),
        "latency_vs_precision": plot_latency(rows, out / "latency_vs_precision.png"),
    }
    grids = tuple(write_grids(runs, out / "grids"))
    return ReportFiles(
        results_json=write_results_json(out / "results.json", rows, runs, scores, header, notes),
        results_md=write_results_md(out / "results.md", rows, header, notes, plots, len(grids)),
        plots=plots, grids=grids,
    )
