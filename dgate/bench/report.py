"""The bench's printed output: one table, the per-step overhead, the UNet's batching and the targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dgate.bench.step_overhead import METHOD, StepOverhead
from dgate.bench.triton_stats import UnetBatching
from dgate.bench.workload import LevelResult

DIFFUSERS, TRITON, FRONTEND = "diffusers", "triton", "frontend"
COLUMNS = ("path", "concurrency", "img/s", "p50 ms", "p95 ms", "vs diffusers", "frontend overhead")

# Targets for the tiny model on 2 CPU cores at 4 steps.
TARGET_SPEEDUP = 1.5  # served throughput at the highest concurrency / diffusers serial
TARGET_STEP_MS = 2.0  # per-step overhead beyond the models' math, at concurrency 1
TARGET_FRONTEND_PCT = 5.0  # frontend p50 over Triton-direct p50 at the same concurrency


@dataclass(frozen=True)
class Target:
    name: str
    value: str
    met: bool | None  # None: the figure could not be computed

    @property
    def verdict(self) -> str:
        return "UNAVAILABLE" if self.met is None else "MET" if self.met else "MISSED"


def frontend_overhead_pct(results: Sequence[LevelResult], concurrency: int) -> float | None:
    by_path = {r.path: r for r in results if r.concurrency == concurrency}
    if TRITON not in by_path or FRONTEND not in by_path:
        return None
    direct = by_path[TRITON].percentile_ms(50)
    return (by_path[FRONTEND].percentile_ms(50) - direct) / direct * 100.0


def table(results: Sequence[LevelResult]) -> str:
    baseline = next(r for r in results if r.path == DIFFUSERS).throughput
    rows = [COLUMNS]
    for r in results:
        overhead = frontend_overhead_pct(results, r.concurrency) if r.path == FRONTEND else None
        rows.append((r.path, str(r.concurrency), f"{r.throughput:.2f}", f"{r.percentile_ms(50):.1f}",
                     f"{r.percentile_ms(95):.1f}", f"{r.throughput / baseline:.2f}x",
                     "-" if overhead is None else f"{overhead:+.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def step_lines(overhead: StepOverhead, batching: Sequence[UnetBatching],
               unet_reference_ms: float | None = None) -> list[str]:
    lines = [f"BLS step cost ({METHOD}):", f"  c=1: {overhead.describe()}"]
    first = min(batching, key=lambda b: b.concurrency, default=None)
    if unet_reference_ms is not None and first is not None:
        lines.append(
            f"  UNet math alone (same ONNX, batch 2, in this process, Triton idle): {unet_reference_ms:.2f} ms/run; "
            f"Triton's UNet compute at c={first.concurrency}: {first.ms_per_execution:.2f} ms/execution "
            f"({first.ms_per_execution - unet_reference_ms:+.2f} ms in the UNet model beyond the math: "
            "stub IPC, cores shared with other models; counted as model compute above)")
    for b in batching:
        lines.append(
            f"  c={b.concurrency}: UNet {b.ms_per_execution:.2f} ms/execution "
            f"(queue {b.queue_ms_per_call:.2f} ms/call); UNet batching {b.rows_per_execution:.2f} rows "
            f"({b.calls_per_execution:.2f} requests) per execution")
    return lines


def targets(results: Sequence[LevelResult], overhead: StepOverhead) -> list[Target]:
    baseline = next(r for r in results if r.path == DIFFUSERS).throughput
    found: list[Target] = []
    top = max(r.concurrency for r in results if r.path != DIFFUSERS)
    served = {r.path: r.throughput for r in results if r.concurrency == top and r.path != DIFFUSERS}
    speedup = min(served.values()) / baseline
    found.append(Target(f"served throughput at c={top} >= {TARGET_SPEEDUP}x diffusers serial",
                        ", ".join(f"{p} {v / baseline:.2f}x" for p, v in served.items()),
                        speedup >= TARGET_SPEEDUP))
    name = f"per-step overhead at c=1 <= {TARGET_STEP_MS:g} ms"
    if overhead.available:
        found.append(Target(name, f"{overhead.ms_per_step:.2f} ms", overhead.ms_per_step <= TARGET_STEP_MS))
    else:
        found.append(Target(name, overhead.reason, None))
    measured = {c: frontend_overhead_pct(results, c) for c in sorted({r.concurrency for r in results})}
    overheads = {c: v for c, v in measured.items() if v is not None}
    if overheads:
        found.append(Target(f"frontend overhead <= {TARGET_FRONTEND_PCT:g}% of latency (every level)",
                            ", ".join(f"c={c} {v:+.1f}%" for c, v in overheads.items()),
                            max(overheads.values()) <= TARGET_FRONTEND_PCT))
    return found


def target_lines(found: Sequence[Target]) -> list[str]:
    return ["Targets:"] + [f"  [{t.verdict}] {t.name}: {t.value}" for t in found]
