"""Start and stop a real tritonserver: the system one (NGC image) or the nvidia-pytriton wheel's CPU build."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dgate.core.lora.request import LORA_DIR_ENV, LORA_DIRS_ENV, adapters_dir, extra_adapter_roots
from dgate.process_group import group_members, shm_regions

log = logging.getLogger(__name__)

CUDA_POOL_ENV = "DGATE_CUDA_POOL_MB"
# Python-backend models hand GPU tensors to each other through Triton's CUDA memory pool; when it is
# full (64 MB by default) python_backend falls back, silently, to slower per-tensor CUDA IPC. A
# batch of SDXL latents and its conditioning per step is tens of MB: size it for several in flight.
DEFAULT_CUDA_POOL_MB = 1024


def gpu_instance_devices(model_repository: Path) -> list[int]:
    """The GPUs the repository's models are placed on: device 0 when any config asks for KIND_GPU
    without naming devices, plus every id named in a `gpus: [...]` list."""
    devices: set[int] = set()
    for config in model_repository.glob("*/config.pbtxt"):
        text = config.read_text()
        if "KIND_GPU" not in text:
            continue
        named = [int(n) for part in text.split("gpus:")[1:] for n in part.split("]")[0].strip(" [").split(",")
                 if n.strip().isdigit()]
        devices.update(named or [0])
    return sorted(devices)


def cuda_pool_args(model_repository: Path) -> list[str]:
    """`--cuda-memory-pool-byte-size` for each GPU the repository uses (none for a CPU repository:
    the CPU build of Triton has no pool to size)."""
    size = int(os.environ.get(CUDA_POOL_ENV, DEFAULT_CUDA_POOL_MB)) * 1024 * 1024
    return [f"--cuda-memory-pool-byte-size={device}:{size}" for device in gpu_instance_devices(model_repository)]


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"


def free_ports() -> TritonPorts:
    """Three distinct free loopback ports; the sockets stay open together so the OS cannot repeat one."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return TritonPorts(*(s.getsockname()[1] for s in socks))
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class TritonBinary:
    path: Path
    wheel_root: Path | None = None  # pytriton/tritonserver when the binary comes from the wheel
    lib_dir: Path | None = None  # nvidia_pytriton.libs: the wheel's binaries need it on LD_LIBRARY_PATH
    version: str = "system"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The python backend stub finds the interpreter (and so the venv's site-packages) through PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # The adapters directory as the launcher sees it (a relative default must not depend on the
        # working directory of Triton's stub processes).
        env[LORA_DIR_ENV] = str(adapters_dir().resolve())
        env[LORA_DIRS_ENV] = ":".join(str(root.resolve()) for root in extra_adapter_roots())
        if self.lib_dir is not None:
            paths = [str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, paths))
        return env

    def prepare_backends(self) -> Path | None:
        """A backend dir with the python backend and this Python's stub (None: the system default)."""
        if self.wheel_root is None:
            return None
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.wheel_root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton {self.version} has no Python backend stub for {pyver}")
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dgate" / "triton-backends"
        target = base / f"pytriton-{self.version}-py{pyver}"
        if (target / "python" / stub.name).is_file():
            return target
        base.mkdir(parents=True, exist_ok=True)
        # Build aside, then rename into place: a concurrent preparer either wins or finds it complete.
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        try:
            shutil.copytree(self.wheel_root / "backends" / "python", tmp / "python",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(stub, tmp / "python" / stub.name)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "python" / stub.name).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("prepared Triton backends in %s", target)
        return target


def find_tritonserver() -> TritonBinary:
    system = shutil.which("tritonserver")
    if system:
        return TritonBinary(Path(system))
    spec = importlib.util.find_spec("pytriton")  # locate the wheel without importing pytriton itself
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            libs = root.parent.parent / "nvidia_pytriton.libs"
            version = importlib.metadata.version("nvidia-pytriton")
            return TritonBinary(root / "bin" / "tritonserver", root, libs, version)
    raise RuntimeError("no tritonserver found: run in the NGC Triton image, or install the CPU build with"
                       " `pip install nvidia-pytriton==0.7.0` (dgate's 'triton-wheel' extra)")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the server and its python stubs
    except ProcessLookupError:
        pass


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.is_file():
        return "(server output went to this process's stdout/stderr)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class TritonServer:
    """A tritonserver child process; use as a context manager, or start()/stop()."""

    def __init__(self, model_repository: Path, ports: TritonPorts = TritonPorts(), *,
                 log_path: Path | None = None, extra_args: Sequence[str] = (),
                 backend_dir: Path | None = None, startup_timeout: float = 300.0,
                 log_verbose: int = 0) -> None:
        self.model_repository = Path(model_repository)
        self._ports, self._log_path = ports, Path(log_path) if log_path else None
        self.extra_args, self.backend_dir = list(extra_args), backend_dir
        self.startup_timeout, self.log_verbose = startup_timeout, log_verbose
        self._process: subprocess.Popen[bytes] | None = None
        # The Python-backend shared-memory regions of the server, read once it is ready: a stub exits
        # on its own soon after a killed server (it polls its parent), taking the names out of /proc.
        self._regions: set[Path] = set()

    @property
    def ports(self) -> TritonPorts:
        return self._ports

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    def command(self, binary: TritonBinary) -> list[str]:
        backends = self.backend_dir or binary.prepare_backends()
        p = self._ports
        args = [str(binary.path), f"--model-repository={self.model_repository.resolve()}",
                f"--http-port={p.http}", f"--grpc-port={p.grpc}", f"--metrics-port={p.metrics}",
                "--allow-metrics=true", "--exit-on-error=true", "--strict-readiness=true",
                # Triton's graceful exit waits this long for in-flight work and idle keep-alive HTTP
                # connections; keep it under stop()'s default 30 s so that it ends before we SIGKILL.
                "--exit-timeout-secs=20", f"--log-verbose={self.log_verbose}"]
        if backends is not None:
            args.append(f"--backend-directory={backends}")
        args += cuda_pool_args(self.model_repository)
        # Triton takes the last value of a repeated flag, so extra_args override the defaults above.
        return args + self.extra_args

    def start(self) -> None:
        if self.is_running():
            return
        binary = find_tritonserver()
        cmd = self.command(binary)
        log.info("starting %s", " ".join(cmd))
        out = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            # Appended: a restarted server's log follows the crash of the one before.
            out = open(self._log_path, "ab")  # noqa: SIM115 - the child keeps writing after we return
        try:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server and its stubs cleanly.
            self._process = subprocess.Popen(cmd, env=binary.env(), stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT if out else None,
                                             start_new_session=True)
        finally:
            if out is not None:
                out.close()
        try:
            self._wait_ready()
        except BaseException:  # timeout or Ctrl-C while waiting: leave no server behind
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        url = f"http://{self._ports.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"tritonserver exited with code {code} during startup:\n"
                                   f"{_tail(self._log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        log.info("tritonserver ready (pid %d)", self._process.pid)
                        self._regions = shm_regions(group_members(self._process.pid))
                        return
            except OSError:
                pass  # not listening yet, or 400 while models load
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {self.startup_timeout:.0f}s:\n"
                                   f"{_tail(self._log_path)}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        proc = self._process
        if proc is None:
            return
        if proc.poll() is not None:  # died on its own: only its leftovers to stop
            self.kill_leftovers()
            return
        proc.send_signal(signal.SIGTERM)  # Triton unloads models and exits gracefully on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not exit in %.0fs, killing it", timeout)
            _kill_group(proc)
            proc.wait()
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the server's process group once the server itself has exited (a
        Python-backend stub can outlive a killed server: it ignores SIGTERM and waits on its parent),
        and unlink the shared-memory regions those stubs mapped, which a killed server leaves behind."""
        proc = self._process
        if proc is None or proc.poll() is None:
            return
        regions = self._regions | shm_regions(group_members(proc.pid))
        _kill_group(proc)
        left = [region for region in regions if region.exists()]  # a server that stopped cleanly unlinked its own
        for region in left:
            region.unlink(missing_ok=True)
        if left:
            log.warning("removed %d shared-memory region(s) of the stopped tritonserver (pid %d)", len(left),
                        proc.pid)
        self._regions = set()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        if self._process is None:
            raise RuntimeError("tritonserver was not started")
        return self._process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(model_repository: Path, ports: TritonPorts, extra_args: Sequence[str] = ()) -> int:
    """`dgate triton`: serve until the server exits; SIGINT/SIGTERM stop it, a second one kills it."""
    server = TritonServer(model_repository, ports, extra_args=extra_args)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        proc = server.process
        if proc is not None and proc.poll() is None:
            log.info("signal %d: stopping tritonserver", signum)
            if len(received) == 1:
                proc.terminate()
            else:
                _kill_group(proc)

    # Handlers go in before the start, so a signal that arrives while Triton loads stops it cleanly too.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except RuntimeError:
            if received:  # stopped on purpose while starting
                return 0
            raise
        if received:
            return 0
        log.info("Triton ready at http %s, grpc %s, metrics %s", ports.http_url, ports.grpc_url, ports.metrics_url)
        return server.wait()
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
