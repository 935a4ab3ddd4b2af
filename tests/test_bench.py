"""`dgate bench`, run tiny end to end: it starts its own tritonserver and frontend and prints one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgate.cli import main

COLUMNS = ["path", "concurrency", "img/s", "p50 ms", "p95 ms", "vs diffusers", "frontend overhead"]


def _table(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["path", "concurrency"])
    rows = []
    for line in lines[start + 2:]:  # header, then a rule of dashes
        cells = line.split()
        if len(cells) != len(COLUMNS):
            break
        rows.append(cells)
    return [lines[start].split("  "), *rows]


def test_bench_prints_the_table(tiny_models: dict[str, Path], model_repository: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--model-repository", str(model_repository), "--model", str(tiny_models["tiny-sd"]),
                 "--model", str(tiny_models["tiny-flux"]), "--concurrency", "1", "--requests", "2", "--steps", "2"])
    everything = capsys.readouterr().out
    assert code == 0, everything
    # One report per pipeline from one server start, then the Triton tree's memory.
    assert everything.count("dgate bench: pipeline ") == 2 and "pipeline tiny-flux (flux)" in everything
    assert "Triton tree after the run: " in everything and " GB PSS in " in everything
    flux_report = everything[everything.index("pipeline tiny-flux"):]
    assert "UNet batching 1.00 rows" in flux_report  # Flux runs without CFG: one row per request-step
    output = everything[: everything.index("pipeline tiny-flux")]
    header, *rows = _table(output)
    assert [cell.strip() for cell in header if cell.strip()] == COLUMNS
    assert [(row[0], row[1]) for row in rows] == [("diffusers", "1"), ("triton", "1"), ("frontend", "1")]
    for path, _, throughput, p50, p95, ratio, overhead in rows:
        assert float(throughput) > 0 and 0 < float(p50) <= float(p95), path
        assert ratio.endswith("x") and float(ratio[:-1]) > 0, path
        if path == "frontend":
            assert overhead.endswith("%")
            float(overhead[:-1])  # a signed percentage: noise can make the frontend look faster
        else:
            assert overhead == "-"
    assert "max pixel difference vs diffusers" in output
    assert "BLS step cost (per-step overhead = " in output
    overhead_line = next(line for line in output.splitlines() if line.strip().startswith("c=1: client"))
    assert "model compute" in overhead_line and "tiny-sd_unet" in overhead_line and "ms/step" in overhead_line
    assert "tiny-sd_denoiser" not in overhead_line  # its own compute is not subtracted
    unet_line = next(line for line in output.splitlines() if line.strip().startswith("c=1: UNet"))
    assert "UNet batching 2.00 rows" in unet_line  # one CFG request per execution
    assert output.count("[MET]") + output.count("[MISSED]") == 3 and "[UNAVAILABLE]" not in output
    _table(flux_report)


def test_bench_lora_prints_switch_reload_and_mix(tiny_models: dict[str, Path], model_repository: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench-lora", "--model-repository", str(model_repository), "--model", str(tiny_models["tiny-sd"]),
                 "--rounds", "2", "--reloads", "1", "--requests", "4", "--concurrency", "2", "--steps", "2"])
    output = capsys.readouterr().out
    assert code == 0, output
    for line in ("weight switch in process (unet", "call, no adapter:", "call, adapter switching:",
                 "reload (explicit load):", "switch / reload: 1/", "mixed / single throughput:"):
        assert line in output, line
    switch_ms = float(output.split("weight switch in process")[1].split("median")[1].split("ms")[0])
    reload_ms = float(output.split("reload (explicit load):")[1].split("median")[1].split("ms")[0])
    assert 0 < switch_ms < reload_ms
