"""Load and fault runs (issue 18, (c)-(e)): `dgate serve` on a tiny-sd repository under a bounded load
of mixed requests, alone, with tritonserver killed mid-run, and with SIGTERM mid-run. The same code is
`dgate loadtest`; the figures each run prints are in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgate.loadtest.scenarios import FaultRun, run_fault, unplanned
from dgate.loadtest.traffic import LoadPlan

# 400 requests at concurrency 32: mixed sizes and n, a quarter streamed (SSE with a partial image).
PLAN = LoadPlan(models=["tiny-sd"], requests=400, concurrency=32, steps=2, deadline_s=60)
# Admission lets the whole concurrency in (its default, 4 x max_images, would refuse some with 429:
# planned, but this run is about nothing being lost).
ENV = {"DGATE_MAX_IN_FLIGHT_PER_PIPELINE": "32", "DGATE_DRAIN_GRACE_S": "30"}
RECOVERY_LIMIT_S = 120  # Triton's restart on 2 CPU cores: backoff 1 s + load, measured ~25 s
EXIT_LIMIT_S = 20  # SIGTERM -> exit, Triton's stop included: measured ~5 s (22 s when Triton waited its exit timeout)


@pytest.fixture(scope="module")
def fault_repository(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd alone, in `dgate export`'s default (async, streaming) design."""
    from dgate.export.pipeline_export import export_pipeline
    from dgate.export.triton_config import ServingOptions

    repository = tmp_path_factory.mktemp("fault_repository")
    export_pipeline(str(tiny_models["tiny-sd"]), repository, options=ServingOptions(onnx_threads=1))
    return repository


def _run(fault_repository: Path, tmp_path: Path, fault: str) -> FaultRun:
    run = run_fault(fault_repository, tmp_path, PLAN, fault, env=ENV)  # type: ignore[arg-type]
    print(run.summary())
    assert run.load.lost == 0 and len(run.load.outcomes) == PLAN.requests
    assert unplanned(run) == {}, run.summary()
    assert run.load.longest_s() < PLAN.deadline_s  # nothing hung
    assert run.leftovers == [], f"processes of the stopped tritonserver still run: {run.leftovers}"
    assert run.leaked_regions == [], f"shared-memory regions of the stopped tritonserver left: {run.leaked_regions}"
    return run


def test_load_run_serves_every_request(fault_repository: Path, tmp_path: Path) -> None:
    run = _run(fault_repository, tmp_path, "none")
    assert run.load.counts() == {"ok": PLAN.requests}
    assert sum(o.streamed for o in run.load.outcomes) > PLAN.requests // 8  # both kinds were sent


def test_triton_killed_under_load_gives_503s_for_the_gap_then_recovers(fault_repository: Path,
                                                                        tmp_path: Path) -> None:
    run = _run(fault_repository, tmp_path, "kill-triton")
    counts = run.load.counts()
    assert counts["ok"] >= PLAN.requests * 0.25  # served before the kill
    assert sum(n for label, n in counts.items() if "503" in label or "stream-error" in label) >= 1
    assert run.recovery_s is not None and run.recovery_s < RECOVERY_LIMIT_S
    assert run.after_recovery is not None and set(run.after_recovery.counts()) == {"ok"}


def test_sigterm_under_load_drains_then_exits(fault_repository: Path, tmp_path: Path) -> None:
    run = _run(fault_repository, tmp_path, "sigterm")
    counts = run.load.counts()
    assert run.exit_code == 0 and run.exit_s is not None and run.exit_s < EXIT_LIMIT_S, run.summary()
    assert run.finished_after_fault() >= 1  # requests in flight at the signal were let finish
    assert counts.get("503 shutting_down", 0) + counts.get("refused", 0) >= 1  # new ones were not taken
