"""PNG figures of a run: metrics and latency per model (matplotlib, no display needed) and one image
grid per prompt (PIL: the model images pasted at their own pixels, no resampling by a plot)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from dgate.eval.generate import ModelRun
from dgate.eval.results import ModelRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

QUALITY_PANELS = (("clip_score", "CLIP score (higher is better)"), ("fid", "FID (lower is better)"),
                  ("lpips", "LPIPS vs reference (lower is closer)"),
                  ("psnr", "PSNR vs reference, dB (higher is closer)"))


def _labels(rows: Sequence[ModelRow]) -> list[str]:
    return [f"{row.model}\n[{row.precision}]" for row in rows]


def _figure(columns: int, rows: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, Any]:
    # A bare Figure draws through Agg without pyplot: no GUI backend, no global state, thread-safe.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def _bars(axis: Any, labels: list[str], values: list[float | None], title: str, fmt: str,
          missing: Sequence[str] | None = None) -> None:
    """One bar per model; a value that is None is drawn as its `missing` text ("n/a" by default)."""
    heights = [value if value is not None and math.isfinite(value) else 0.0 for value in values]
    bars = axis.bar(range(len(labels)), heights, color=[f"C{index % 10}" for index in range(len(labels))])
    for position, (bar, value) in enumerate(zip(bars, values, strict=True)):
        if value is None or not math.isfinite(value):
            text = missing[position] if missing else "n/a"
        else:
            text = format(value, fmt)
        axis.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=8, xytext=(0, 2), textcoords="offset points")
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.margins(y=0.15)


def plot_quality(rows: Sequence[ModelRow], path: Path) -> Path:
    """CLIP / FID / LPIPS / PSNR per model, each bar labelled with the model's precision ("n/a": not computed)."""
    figure, axes = _figure(2, 2)
    labels = _labels(rows)
    for axis, (key, title) in zip(axes.flat, QUALITY_PANELS, strict=True):
        # the reference model is not compared with itself: "ref", not "n/a"
        missing = ["ref" if row.reference and key != "clip_score" else "n/a" for row in rows]
        _bars(axis, labels, [getattr(row, key) for row in rows], title, ".4f" if key == "lpips" else ".2f", missing)
    figure.suptitle("Quality per model and precision")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def plot_latency(rows: Sequence[ModelRow], path: Path) -> Path:
    """Mean latency per image (with p95 marked) and throughput per model and precision."""
    figure, axes = _figure(2)
    labels = _labels(rows)
    _bars(axes[0, 0], labels, [row.latency_ms_mean for row in rows], "latency per image, ms (mean; x = p95)", ".1f")
    axes[0, 0].scatter(range(len(rows)), [row.latency_ms_p95 for row in rows], marker="x", color="black", zorder=3)
    _bars(axes[0, 1], labels, [row.throughput_ips for row in rows], "throughput, images/s", ".3f")
    figure.suptitle("Latency and throughput per model and precision")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """`text` shortened with an ellipsis to fit `width` pixels (a long model name must not run into the next tile)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def write_grids(runs: Sequence[ModelRun], directory: Path, min_tile: int = 192) -> list[Path]:
    """grids/prompt_<index:04d>.png: the prompt, then each model's image side by side under its name.

    Small images are enlarged by an integer factor (nearest neighbour) to at least `min_tile` pixels wide,
    so a 64x64 tile stays legible and every pixel stays what the model produced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("prompt_*.png"):  # a previous, longer run's grids must not linger
        stale.unlink()
    font, title_font = _font(12), _font(13)
    paths = []
    for position, reference in enumerate(runs[0].images):
        tiles = []
        for run in runs:
            with Image.open(run.images[position].path) as image:
                tile = image.convert("RGB")
            factor = max(1, math.ceil(min_tile / tile.width))
            tiles.append(tile.resize((tile.width * factor, tile.height * factor), Image.Resampling.NEAREST))
        pad, caption_h = 8, 34
        width = sum(tile.width for tile in tiles) + pad * (len(tiles) + 1)
        chars = max(20, width // 7)
        prompt_lines = textwrap.wrap(f"#{reference.index} seed {reference.seed}: {reference.prompt}", chars)[:3]
        header_h = 8 + 17 * 3  # fixed, so every grid of a run has one size (W&B shows a list of them as one)
        height = header_h + caption_h + max(tile.height for tile in tiles) + pad
        grid = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(grid)
        for line_number, line in enumerate(prompt_lines):
            draw.text((pad, 4 + 17 * line_number), line, fill="black", font=title_font)
        x = pad
        for run, tile in zip(runs, tiles, strict=True):
            draw.text((x, header_h + 2), _fit(draw, run.model, font, tile.width), fill="black", font=font)
            draw.text((x, header_h + 17), _fit(draw, f"[{run.precision}]", font, tile.width), fill="dimgray",
                      font=font)
            grid.paste(tile, (x, header_h + caption_h))
            x += tile.width + pad
        path = directory / f"prompt_{reference.index:04d}.png"
        grid.save(path)
        paths.append(path)
    return paths
