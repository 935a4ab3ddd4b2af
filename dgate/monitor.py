"""`python -m dgate.monitor` (`make monitor`): a real Prometheus against a running D-Gate.

Renders monitoring/prometheus.yml with the addresses of Triton's metrics endpoint and the frontend
(`make serve`'s 8002 and 9000 by default), with the alert rules beside it, and runs Debian's
`prometheus` (`make prometheus` installs it) until Ctrl-C. The tests start the same server on free
ports with a one-second scrape interval (tests/test_monitoring.py).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

JOBS = ("triton", "frontend")  # the job names the alert rules and the dashboard select on


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: `make prometheus` installs Debian's prometheus package")
    return path


def render_config(base: Path, targets: dict[str, Sequence[str]], *, interval: str | None = None,
                   rule_files: Sequence[Path] | None = None) -> dict[str, Any]:
    """`base` (a prometheus.yml) with each job's static targets replaced; rule files made absolute
    (Prometheus reads them relative to the config file, which is rendered elsewhere)."""
    config: dict[str, Any] = yaml.safe_load(base.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise ValueError(f"{base} has no scrape job {', '.join(sorted(unknown))}")
    for name, addresses in targets.items():
        jobs[name]["static_configs"] = [{"targets": list(addresses)}]
    if interval is not None:
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    files = rule_files if rule_files is not None else [base.parent / f for f in config.get("rule_files", [])]
    config["rule_files"] = [str(Path(f).resolve()) for f in files]
    return config


class PrometheusServer:
    """A prometheus child process on `listen` (host:port), its TSDB under `data_dir`."""

    def __init__(self, config: dict[str, Any], data_dir: Path, listen: str = "127.0.0.1:9090") -> None:
        self.config, self.data_dir, self.listen = config, Path(data_dir), listen
        self.log_path = self.data_dir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.data_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [find_binary("prometheus"), f"--config.file={config_path}",
               f"--storage.tsdb.path={self.data_dir / 'data'}", f"--web.listen-address={self.listen}"]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not become ready on {self.listen}:\n{self.log_tail()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # Prometheus flushes its head block and exits on SIGTERM
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgate.monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("monitoring/prometheus.yml"))
    parser.add_argument("--triton", default="127.0.0.1:8002",
                        help="Triton's metrics address (dgate serve --metrics-port)")
    parser.add_argument("--frontend", action="append", help="a frontend's address (repeatable; default 127.0.0.1:9000)")
    parser.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus' own address (UI and API)")
    parser.add_argument("--data", type=Path, default=Path("build/prometheus"), help="its TSDB and rendered config")
    args = parser.parse_args(argv)
    config = render_config(args.config, {"triton": [args.triton], "frontend": args.frontend or ["127.0.0.1:9000"]})
    server = PrometheusServer(config, args.data, args.listen)
    server.start()
    print(f"Prometheus at {server.url} (alerts: {server.url}/alerts), scraping Triton {args.triton} and the frontend "
          f"{', '.join(args.frontend or ['127.0.0.1:9000'])}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return server.wait()
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        server.stop()  # after the wait above has unwound: stopping inside a handler would deadlock on it


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    raise SystemExit(main())
