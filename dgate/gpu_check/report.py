"""Results of `dgate gpu-check`: one row per case, the verdicts, the table and the JSON report."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PASS, FAIL, SKIPPED, MEASURED = "pass", "fail", "skipped", "measured"
SECTIONS = ("parity", "served", "lora", "graphs", "quantized", "full_size", "batching")
# FP32 parity: served images may differ from diffusers' by this many 8-bit levels at most.
PIXEL_BOUND = 2
COLUMNS = ("section", "case", "engine", "result", "figure")


@dataclass
class CaseResult:
    """One row: `figure` is the short text the table shows, `values` the numbers behind it."""

    section: str
    case: str
    engine: str
    result: str  # PASS | FAIL | SKIPPED | MEASURED (a figure without a bound)
    figure: str = ""
    reason: str = ""  # why it was skipped or failed
    values: dict[str, Any] = field(default_factory=dict)


def skipped(section: str, case: str, engine: str, reason: str) -> CaseResult:
    return CaseResult(section, case, engine, SKIPPED, f"skipped: {reason}", reason)


def max_pixel_difference(served: np.ndarray, expected: np.ndarray) -> int:
    if served.shape != expected.shape:
        raise ValueError(f"served images {served.shape} vs diffusers' {expected.shape}")
    return int(np.abs(served.astype(np.int32) - expected.astype(np.int32)).max())


def psnr(served: np.ndarray, expected: np.ndarray) -> float:
    """PSNR in dB of uint8 images (peak 255); inf when identical."""
    mse = float(np.mean((served.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def parity_verdict(max_difference: int, bound: int = PIXEL_BOUND) -> str:
    return PASS if max_difference <= bound else FAIL


def pixel_parity(section: str, case: str, engine: str, served: np.ndarray, expected: np.ndarray,
                 bound: int = PIXEL_BOUND) -> CaseResult:
    """FP32 parity of served images with diffusers' own: pass when no pixel differs by more than `bound`."""
    difference = max_pixel_difference(served, expected)
    return CaseResult(section, case, engine, parity_verdict(difference, bound), f"max |diff| {difference}/255",
                      values={"max_pixel_difference": difference, "bound": bound, "psnr_db": psnr(served, expected),
                              "reference_std": float(expected.std())})


def exit_code(results: Iterable[CaseResult]) -> int:
    """Nonzero when any case failed; skipped and measured cases do not fail the check."""
    return 1 if any(result.result == FAIL for result in results) else 0


def table(results: Sequence[CaseResult]) -> str:
    rows = [COLUMNS, *((r.section, r.case, r.engine, r.result, r.figure) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: identical images (PSNR inf) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def report(results: Sequence[CaseResult], environment: dict[str, Any], settings: dict[str, Any],
           wall_s: float) -> dict[str, Any]:
    sections: dict[str, list[dict[str, Any]]] = {section: [] for section in SECTIONS}
    for result in results:
        sections.setdefault(result.section, []).append(asdict(result))
    return _finite({"environment": environment, "settings": settings, "wall_s": round(wall_s, 1),
                    "exit_code": exit_code(results), "sections": sections})


def write_report(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, allow_nan=False) + "\n")
