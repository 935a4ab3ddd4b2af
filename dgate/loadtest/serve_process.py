"""`dgate serve` as a child process, with the faults a load run injects into it: tritonserver killed
(`kill -9`, as the OOM killer does) and SIGTERM to `dgate serve` (a pod's termination).

Processes are found through /proc (Linux, dgate/process_group.py): the tritonserver is the child of
`dgate serve` named `tritonserver`, and it leads its own process group (the Python-backend stubs are
in it), so what is left of a killed server is every process whose group is the dead server's pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dgate.process_group import command_name, group_members, is_zombie, parent_of, pids
from dgate.triton_server import TritonPorts, free_ports


def _frontend_port() -> int:
    return free_ports().http


class ServeProcess:
    """`dgate serve --model-repository R` on free loopback ports; its output goes to `log_path`."""

    def __init__(self, model_repository: Path, work_dir: Path, env: dict[str, str] | None = None,
                 startup_timeout_s: float = 300.0) -> None:
        self.model_repository, self.work_dir = Path(model_repository), Path(work_dir)
        self.extra_env, self.startup_timeout_s = dict(env or {}), startup_timeout_s
        self.triton_ports: TritonPorts = free_ports()
        self.port = _frontend_port()
        self.log_path = self.work_dir / "dgate-serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ) | {
            "DGATE_JOBS_DB": f"sqlite:///{(self.work_dir / 'jobs.db').resolve()}",
            "DGATE_ASSETS_DIR": str((self.work_dir / "assets").resolve()),
            "DGATE_LOG_LEVEL": "INFO",
        } | self.extra_env
        p = self.triton_ports
        command = [sys.executable, "-c", "from dgate.cli import main; raise SystemExit(main())", "serve",
                   "--model-repository", str(self.model_repository), "--port", str(self.port),
                   "--http-port", str(p.http), "--grpc-port", str(p.grpc), "--metrics-port", str(p.metrics)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.wait_ready(self.startup_timeout_s)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /ready answered 200; RuntimeError with the log's tail on timeout or exit."""
        started = time.monotonic()
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dgate serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"dgate serve not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def triton_pid(self) -> int | None:
        """The running tritonserver child of this `dgate serve`."""
        if self.process is None:
            return None
        for pid in pids():
            if parent_of(pid) == self.process.pid and command_name(pid) == "tritonserver" and not is_zombie(pid):
                return pid
        return None

    def kill_triton(self) -> int:
        """SIGKILL the tritonserver (not its stubs: what a crash leaves); returns its pid (= its group)."""
        pid = self.triton_pid()
        if pid is None:
            raise RuntimeError("no tritonserver is running under this dgate serve")
        os.kill(pid, signal.SIGKILL)
        return pid

    def terminate(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if it is still running after `timeout_s`."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of it and its tritonserver group if it does not go."""
        if self.process is None or self.process.poll() is not None:
            return
        triton = self.triton_pid()
        self.terminate()
        if self.wait(60) is None:
            self.process.kill()
            self.process.wait()
            if triton is not None:
                for pid in group_members(triton):
                    os.kill(pid, signal.SIGKILL)
