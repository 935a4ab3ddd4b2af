"""`dgate gpu-check` on the CPU, in process: every section reported, the tiny pipelines at parity on
each engine present, LoRA A -> B -> A exact, what is missing skipped with its reason, and a failed
case failing the check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dgate.gpu_check import main, runner
from dgate.gpu_check.report import (
    FAIL,
    MEASURED,
    PASS,
    PIXEL_BOUND,
    SECTIONS,
    SKIPPED,
    CaseResult,
    exit_code,
    parity_verdict,
    pixel_parity,
    skipped,
)


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    root = tmp_path_factory.mktemp("gpu-check")
    lora_dir = os.environ.get("DGATE_LORA_DIR")
    code = main(["--device", "cpu", "--workdir", str(root / "work"), "--out", str(root / "report.json")])
    assert os.environ.get("DGATE_LORA_DIR") == lora_dir, "the check must put the adapters directory back"
    return code, json.loads((root / "report.json").read_text())


def _rows(report: dict[str, Any], section: str, engine: str | None = None) -> list[dict[str, Any]]:
    return [row for row in report["sections"][section] if engine is None or row["engine"] == engine]


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_the_cpu_check_passes_and_reports_every_section(cpu_check: tuple[int, dict[str, Any]]) -> None:
    code, report = cpu_check
    assert code == 0 and report["exit_code"] == 0
    assert list(report["sections"]) == list(SECTIONS)
    assert all(report["sections"][section] for section in SECTIONS)
    assert report["environment"]["device"] == "cpu" and report["settings"]["full_size"] is False


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_every_parity_case_on_the_cpu_passes_with_its_figure(cpu_check: tuple[int, dict[str, Any]]) -> None:
    _, report = cpu_check
    for engine in ("torch", "onnxruntime"):
        rows = _rows(report, "parity", engine)
        assert [row["case"] for row in rows] == ["tiny-sd", "tiny-sdxl", "tiny-flux"]
        for row in rows:
            difference = row["values"]["max_pixel_difference"]
            assert row["result"] == PASS and 0 <= difference <= PIXEL_BOUND, row
            assert row["figure"] == f"max |diff| {difference}/255"
            assert row["values"]["reference_std"] > 5, "a flat reference image would prove nothing"


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_tensorrt_and_quantized_cases_are_skipped_on_the_cpu_with_a_reason(
        cpu_check: tuple[int, dict[str, Any]]) -> None:
    _, report = cpu_check
    tensorrt = _rows(report, "parity", "tensorrt")
    assert len(tensorrt) == 3
    # No TensorRT in the CPU install; with it, still no GPU here: skipped either way, saying why.
    reasons = ("tensorrt is not installed (make install GPU=1)", "TensorRT plans run on a GPU only")
    assert all(row["result"] == SKIPPED and row["reason"] in reasons for row in tensorrt)
    (graphs,) = report["sections"]["graphs"]
    assert graphs["result"] == SKIPPED and graphs["reason"] in reasons
    (quantized,) = report["sections"]["quantized"]
    assert quantized["result"] == SKIPPED and "TensorRT" in quantized["reason"]
    assert quantized["figure"] == f"skipped: {quantized['reason']}"
    (full_size,) = report["sections"]["full_size"]
    assert full_size["result"] == SKIPPED and "--full-size" in full_size["reason"]


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_served_parity_goes_through_tritonserver_on_each_cpu_engine(cpu_check: tuple[int, dict[str, Any]]) -> None:
    _, report = cpu_check
    rows = report["sections"]["served"]
    assert [row["engine"] for row in rows] == ["torch", "onnxruntime", "tensorrt"]
    for row in rows[:2]:  # tritonserver is installed here (the triton-wheel extra)
        difference = row["values"]["max_pixel_difference"]
        assert row["result"] == PASS and 0 <= difference <= PIXEL_BOUND, row
        assert row["figure"] == f"max |diff| {difference}/255 through tritonserver"
    assert rows[2]["result"] == SKIPPED


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_lora_switches_exactly_on_each_cpu_engine(cpu_check: tuple[int, dict[str, Any]]) -> None:
    _, report = cpu_check
    rows = report["sections"]["lora"]
    assert [row["engine"] for row in rows] == ["torch", "onnxruntime", "tensorrt"]
    assert rows[2]["result"] == SKIPPED  # no GPU here
    for row in rows[:2]:
        values = row["values"]
        assert row["result"] == PASS, row
        assert values["a_b_a_exact"] is True and values["adapters_change_output"] is True
        assert values["switch_ms"] >= 0 and values["reload_ms"] > 0


@pytest.mark.slow  # the whole CPU check: ~20 s alone, over a minute on 2 busy cores
def test_batching_reports_time_per_row(cpu_check: tuple[int, dict[str, Any]]) -> None:
    _, report = cpu_check
    rows = report["sections"]["batching"]
    assert [row["values"]["batch"] for row in rows] == [2, 8, 16]
    assert all(row["result"] == MEASURED and row["values"]["ms_per_row"] > 0 for row in rows)


def test_a_parity_figure_above_the_bound_fails() -> None:
    expected = np.full((1, 8, 8, 3), 100, np.uint8)
    served = expected.copy()
    served[0, 3, 4, 1] += PIXEL_BOUND + 1
    result = pixel_parity("parity", "tiny-sd", "torch", served, expected)
    assert result.result == FAIL and result.values["max_pixel_difference"] == PIXEL_BOUND + 1
    assert parity_verdict(PIXEL_BOUND) == PASS and parity_verdict(PIXEL_BOUND + 1) == FAIL
    passing = pixel_parity("parity", "tiny-sd", "torch", expected, expected)
    assert exit_code([passing, skipped("quantized", "x", "tensorrt", "needs TensorRT")]) == 0
    assert exit_code([passing, result]) != 0


def test_a_failed_case_makes_the_command_exit_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    expected = np.zeros((1, 8, 8, 3), np.uint8)

    def failing() -> CaseResult:
        return pixel_parity("parity", "tiny-sd", "torch", expected + 9, expected)

    def raising() -> CaseResult:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "plan", lambda *args: [runner.Case("parity", "tiny-sd", "torch", failing),
                                                       runner.Case("lora", "tiny-sd", "torch", raising)])
    out = tmp_path / "report.json"
    assert main(["--device", "cpu", "--workdir", str(tmp_path / "work"), "--out", str(out)]) != 0
    report = json.loads(out.read_text())
    assert report["exit_code"] != 0
    (parity,) = report["sections"]["parity"]
    assert parity["result"] == FAIL and parity["values"]["max_pixel_difference"] == 9
    (lora,) = report["sections"]["lora"]
    assert lora["result"] == FAIL and lora["reason"] == "RuntimeError: CUDA out of memory"
    table = capsys.readouterr().out
    assert "max |diff| 9/255" in table and "error: RuntimeError: CUDA out of memory" in table
