"""dgate.triton_server against a real tritonserver (the system one, or the nvidia-pytriton wheel's build)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dgate.triton_server import TritonPorts, TritonServer, find_tritonserver, free_ports

ADD_ONE_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [4] }]
output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [4] }]
dynamic_batching {}
instance_group [{ kind: KIND_CPU }]
"""

ADD_ONE_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", x + 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("deliberately broken model")
"""


def write_model(repo: Path, name: str, model_py: str, config: str = ADD_ONE_CONFIG) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(config))
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


def is_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(ports: TritonPorts, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{ports.http_url}/v2/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("tritonserver did not become ready")


def test_ports_urls() -> None:
    ports = TritonPorts()
    assert (ports.http_url, ports.grpc_url) == ("127.0.0.1:8000", "127.0.0.1:8001")
    assert ports.metrics_url == "http://127.0.0.1:8002/metrics"
    free = free_ports()
    assert len({free.http, free.grpc, free.metrics}) == 3


def test_command_defaults_and_overrides(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, TritonPorts(1, 2, 3), backend_dir=tmp_path / "b",
                          extra_args=["--model-control-mode=explicit", "--strict-readiness=false"])
    cmd = server.command(find_tritonserver())
    assert f"--model-repository={tmp_path.resolve()}" in cmd
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3", "--allow-metrics=true",
            f"--backend-directory={tmp_path / 'b'}"} <= set(cmd)
    # Triton takes the last occurrence of a flag: extra args come after the defaults.
    assert cmd.index("--strict-readiness=false") > cmd.index("--strict-readiness=true")
    assert cmd[-1] == "--strict-readiness=false"


def test_prepare_backends_concurrently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = find_tritonserver()
    if binary.wheel_root is None:
        pytest.skip("system tritonserver uses its own backends")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    results: list[Path | None] = []
    threads = [threading.Thread(target=lambda: results.append(binary.prepare_backends())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    backends = results[0]
    assert backends is not None
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    assert [p.name for p in backends.parent.iterdir()] == [backends.name]  # no temp dirs left behind


def test_serves_http_and_grpc_then_stops(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    write_model(tmp_path / "repo", "add_one", ADD_ONE_MODEL)
    ports = free_ports()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    log_path = tmp_path / "triton.log"
    with TritonServer(tmp_path / "repo", ports, log_path=log_path, startup_timeout=120) as server:
        assert server.is_running()
        http = httpclient.InferenceServerClient(ports.http_url)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(http.infer("add_one", [inp]).as_numpy("OUTPUT0"), x + 1)
        http.close()  # Triton's graceful exit waits for open keep-alive HTTP connections

        grpc = grpcclient.InferenceServerClient(ports.grpc_url)
        ginp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x * 2)
        np.testing.assert_array_equal(grpc.infer("add_one", [ginp]).as_numpy("OUTPUT0"), x * 2 + 1)
        grpc.close()

        with urllib.request.urlopen(ports.metrics_url, timeout=5) as resp:
            assert 'nv_inference_count{model="add_one"' in resp.read().decode()
        process = server.process
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 20, "graceful SIGTERM exit, not the SIGKILL fallback"
        server.stop()  # idempotent
    assert process is not None and process.returncode == 0
    assert not server.is_running()
    assert not any(is_listening(port) for port in (ports.http, ports.grpc, ports.metrics))
    assert "Started GRPCInferenceService" in log_path.read_text()


def test_broken_model_fails_start_with_log(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "broken", BROKEN_MODEL)
    server = TritonServer(tmp_path / "repo", free_ports(), log_path=tmp_path / "triton.log")
    with pytest.raises(RuntimeError, match="deliberately broken model") as err:
        server.start()
    assert "exited with code" in str(err.value)
    assert not server.is_running()


def test_run_foreground_stops_on_sigint(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "add_one", ADD_ONE_MODEL)
    ports = free_ports()
    code = ("import sys; from pathlib import Path; from dgate.triton_server import TritonPorts, run_foreground;"
            " sys.exit(run_foreground(Path(sys.argv[1]), TritonPorts(*map(int, sys.argv[2:]))))")
    args = [str(tmp_path / "repo"), str(ports.http), str(ports.grpc), str(ports.metrics)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(ports)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not is_listening(ports.http)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_gpu_repositories_get_a_cuda_pool_sized_for_tensors_between_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dgate.triton_server import cuda_pool_args

    (tmp_path / "cpu_model").mkdir()
    (tmp_path / "cpu_model" / "config.pbtxt").write_text('instance_group { kind: KIND_CPU count: 1 }')
    assert cuda_pool_args(tmp_path) == []  # the CPU build has no pool to size
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.pbtxt").write_text('instance_group {\n  kind: KIND_GPU\n  count: 1\n}')
    assert cuda_pool_args(tmp_path) == [f"--cuda-memory-pool-byte-size=0:{1024 * 1024 * 1024}"]
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.pbtxt").write_text('instance_group { kind: KIND_GPU gpus: [1, 2] }')
    monkeypatch.setenv("DGATE_CUDA_POOL_MB", "256")
    assert cuda_pool_args(tmp_path) == [f"--cuda-memory-pool-byte-size={d}:{256 * 1024 * 1024}" for d in (0, 1, 2)]
    server = TritonServer(tmp_path, TritonPorts(1, 2, 3), backend_dir=tmp_path / "b")
    assert f"--cuda-memory-pool-byte-size=2:{256 * 1024 * 1024}" in server.command(find_tritonserver())
