"""The load and fault runs of `dgate loadtest` (and of tests/test_load_faults_e2e.py): a bounded load on
a `dgate serve` it starts, optionally with tritonserver killed, or SIGTERM sent, once a share of the
requests is answered.

- `none`: the load alone (every request accounted for, latency percentiles);
- `kill-triton`: `kill -9` of tritonserver mid-run; measures the gap until `/ready` is 200 again (the
  supervisor's restart), checks that nothing of the killed server is left, then sends a second,
  small load that must be served in full;
- `sigterm`: SIGTERM to `dgate serve` mid-run; measures the time to its exit (the drain, the video
  requeue, Triton's stop) and checks that nothing of its tritonserver is left.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dgate.loadtest import Fault
from dgate.loadtest.serve_process import ServeProcess
from dgate.loadtest.traffic import LoadPlan, LoadReport, Outcome, run_load
from dgate.process_group import group_members, shm_regions


@dataclass
class FaultRun:
    fault: Fault
    load: LoadReport
    fault_at_s: float | None = None  # since the load began
    recovery_s: float | None = None  # kill-triton: kill -> /ready 200 again
    after_recovery: LoadReport | None = None
    exit_code: int | None = None  # sigterm
    exit_s: float | None = None  # sigterm: SIGTERM -> exit
    leftovers: list[int] = field(default_factory=list)  # live processes of the old tritonserver's group
    leaked_regions: list[str] = field(default_factory=list)  # its /dev/shm regions still there after the run

    def finished_after_fault(self) -> int:
        """`ok` answers that ended after the fault: requests in flight at a SIGTERM that were let finish."""
        if self.fault_at_s is None:
            return 0
        return sum(1 for o in self.load.outcomes if o.kind == "ok" and o.started + o.seconds > self.fault_at_s)

    def summary(self) -> str:
        lines = [f"[{self.fault}] {self.load.summary()}"]
        if self.fault_at_s is not None:
            lines.append(f"  fault at {self.fault_at_s:.2f} s; ok answers finished after it: "
                         f"{self.finished_after_fault()}")
        if self.recovery_s is not None:
            lines.append(f"  recovery: /ready 200 again {self.recovery_s:.1f} s after the kill")
        if self.after_recovery is not None:
            lines.append(f"  after recovery: {self.after_recovery.summary()}")
        if self.exit_s is not None:
            lines.append(f"  exit code {self.exit_code} {self.exit_s:.1f} s after SIGTERM")
        lines.append(f"  processes of the old tritonserver left: {len(self.leftovers)}; its shared-memory "
                     f"regions left: {len(self.leaked_regions)}")
        return "\n".join(lines)


class _Trigger:
    """Fires the fault from the load's outcome callback once `at` answers are in (in a thread: the
    fault's own waiting must not stall the load's event loop)."""

    def __init__(self, serve: ServeProcess, fault: Fault, at: int, t0: float) -> None:
        self.serve, self.fault, self.at, self.t0 = serve, fault, at, t0
        self.fired_at: float | None = None
        self.triton_pid: int | None = None
        self.regions: set[Path] = set()  # the old server's /dev/shm regions, read just before the fault
        self.recovery_s: float | None = None
        self.exit_code: int | None = None
        self.exit_s: float | None = None
        self._answers = 0
        self.thread: threading.Thread | None = None

    def __call__(self, _outcome: Outcome) -> None:
        self._answers += 1
        if self._answers == self.at and self.fault != "none":
            self.fired_at = time.monotonic() - self.t0
            triton = self.serve.triton_pid()
            self.regions = shm_regions(group_members(triton)) if triton is not None else set()
            if self.fault == "kill-triton":
                self.triton_pid = self.serve.kill_triton()
                self.thread = threading.Thread(target=self._await_recovery, daemon=True)
            else:
                self.triton_pid = self.serve.triton_pid()
                self.serve.terminate()
                self.thread = threading.Thread(target=self._await_exit, daemon=True)
            self.thread.start()

    def _await_recovery(self) -> None:
        killed = time.monotonic()
        while self.serve.ready():  # the frontend notices on its next call to Triton
            time.sleep(0.05)
        self.serve.wait_ready(timeout_s=600)
        self.recovery_s = time.monotonic() - killed

    def _await_exit(self) -> None:
        sent = time.monotonic()
        self.exit_code = self.serve.wait(600)
        self.exit_s = time.monotonic() - sent


def run_fault(repository: Path, work_dir: Path, plan: LoadPlan, fault: Fault = "none", *,
              fault_share: float = 0.3, env: dict[str, str] | None = None) -> FaultRun:
    serve = ServeProcess(repository, work_dir, env)
    serve.start()
    try:
        trigger = _Trigger(serve, fault, at=max(1, int(plan.requests * fault_share)), t0=time.monotonic())
        trigger.t0 = time.monotonic()
        load = asyncio.run(run_load(serve.base_url, plan, on_outcome=trigger))
        run = FaultRun(fault, load, fault_at_s=trigger.fired_at)
        if trigger.thread is not None:
            trigger.thread.join(timeout=600)
        if fault == "kill-triton":
            run.recovery_s = trigger.recovery_s
            small = replace(plan, requests=min(plan.requests, 16), concurrency=min(plan.concurrency, 4),
                            seed=plan.seed + 1)
            run.after_recovery = asyncio.run(run_load(serve.base_url, small))
        elif fault == "sigterm":
            run.exit_code, run.exit_s = trigger.exit_code, trigger.exit_s
        if trigger.triton_pid is not None:
            time.sleep(0.5)  # kill-triton: the supervisor reaped the group when it saw the exit
            run.leftovers = group_members(trigger.triton_pid)
            run.leaked_regions = sorted(str(region) for region in trigger.regions if region.exists())
        return run
    finally:
        serve.stop()


# The answers a run may give by design; anything else (500s, timeouts, broken answers) fails it.
PLANNED: dict[Fault, frozenset[str]] = {
    "none": frozenset({"ok", "429 pipeline_busy", "429 rate_limit_exceeded"}),
    "kill-triton": frozenset({"ok", "429 pipeline_busy", "429 rate_limit_exceeded", "503 service_unavailable",
                              "503 request_cancelled", "stream-error service_unavailable",
                              "stream-error request_cancelled"}),
    "sigterm": frozenset({"ok", "429 pipeline_busy", "429 rate_limit_exceeded", "503 shutting_down", "refused"}),
}


def unplanned(run: FaultRun) -> dict[str, int]:
    """Answers outside the fault's plan, with lost requests (never planned)."""
    counts = {label: n for label, n in run.load.counts().items() if label not in PLANNED[run.fault]}
    if run.load.lost:
        counts["lost"] = run.load.lost
    if run.after_recovery is not None:
        counts |= {f"after recovery: {label}": n for label, n in run.after_recovery.counts().items() if label != "ok"}
    return counts
