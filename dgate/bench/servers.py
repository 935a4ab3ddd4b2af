"""tritonserver and the frontend for one bench run, on free loopback ports, stopped on exit."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dgate.triton_server import TritonPorts, TritonServer, free_ports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Servers:
    triton: TritonServer
    frontend_url: str

    @property
    def grpc_url(self) -> str:
        return self.triton.ports.grpc_url


def _free_port(avoid: TritonPorts) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in (avoid.http, avoid.grpc, avoid.metrics):
            return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the frontend exited with code {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the frontend did not answer {url}/health in {timeout_s:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def start_frontend(triton_grpc_url: str, port: int, log_path: Path) -> Iterator[str]:
    """The frontend as its own process (`dgate frontend`), as deployed: it must not share our GIL."""
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DGATE_LOG_LEVEL="WARNING")  # no JSON access-log line per request
    cmd = [sys.executable, "-m", "dgate.cli", "frontend", "--triton-url", triton_grpc_url,
           "--host", "127.0.0.1", "--port", str(port)]
    log.info("starting the frontend: %s", " ".join(cmd))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(url, proc, log_path)
        log.info("frontend ready at %s (pid %d)", url, proc.pid)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def start_servers(model_repository: Path, workdir: Path) -> Iterator[Servers]:
    ports = free_ports()
    with TritonServer(model_repository, ports, log_path=workdir / "tritonserver.log") as triton:
        log.info("tritonserver ready: grpc %s (log %s)", ports.grpc_url, workdir / "tritonserver.log")
        with start_frontend(ports.grpc_url, _free_port(ports), workdir / "frontend.log") as url:
            yield Servers(triton, url)
