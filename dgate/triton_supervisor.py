"""Keep the tritonserver of `dgate serve` running: restart it when it dies, give up loudly.

`dgate serve` runs the frontend and its tritonserver as one unit. When Triton dies (OOM killer, a
crashed backend, `kill -9`), the frontend answers 503 on its own (Triton is unreachable) and this
supervisor starts Triton again with exponential backoff; the frontend's gRPC channel reconnects by
itself (frontend/engine/triton.py keeps gRPC's reconnect backoff short). Every restart is logged and
counted (`dgate_triton_restarts_total` on the frontend's /metrics). After `max_failures` failed
starts in a row it gives up and stops the process, which then exits non-zero, so that an outer
supervisor (systemd, Kubernetes) restarts the pair: a Triton that cannot start will not start by
retrying forever. Why restart in process rather than always exiting: see ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dgate.triton_server import TritonServer

log = logging.getLogger(__name__)

# Backoff between starts: 1, 2, 4 ... up to 30 s; a server that stayed up this long resets it.
FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S = 1.0, 30.0, 120.0
MAX_FAILURES = 5


def stop_this_process() -> None:
    """SIGTERM to ourselves: the frontend shuts down as on any SIGTERM and `dgate serve` returns."""
    os.kill(os.getpid(), signal.SIGTERM)


class TritonSupervisor(Collector):
    """Watches a started TritonServer from a thread; `stop()` before the server is stopped on purpose."""

    def __init__(self, server: TritonServer, *, max_failures: int = MAX_FAILURES,
                 first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 on_give_up: Callable[[], None] = stop_this_process) -> None:
        self.server = server
        self.max_failures, self.on_give_up = max_failures, on_give_up
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self.restarts = 0  # successful restarts
        self.exits = 0  # unexpected exits seen
        self.gave_up = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # start() here vs stop() from the main thread
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the caller then stops the server); waits for a restart in progress to end.
        The thread itself ends when the server it waits on exits (it is a daemon: no join needed)."""
        self._stopping.set()
        with self._lock:
            pass

    def _watch(self) -> None:
        backoff, failures = self.first_backoff_s, 0
        while not self._stopping.is_set():
            process = self.server.process
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            self.exits += 1
            # Whatever the dead server left in its process group (Python-backend stubs that outlive
            # it) goes now: they hold GPU memory and the shared-memory regions of the old server.
            self.server.kill_leftovers()
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff, failures = self.first_backoff_s, 0
            while not self._stopping.is_set():
                log.error("tritonserver exited unexpectedly (code %s); starting it again in %.0f s", code, backoff)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self.server.start()
                except Exception as exc:  # start() left no server behind
                    failures += 1
                    log.error("tritonserver did not start again (%d of %d tries): %s", failures,
                              self.max_failures, exc)
                    if failures >= self.max_failures:
                        self.gave_up = True
                        log.critical("giving up on tritonserver after %d failed starts: stopping", failures)
                        self.on_give_up()
                        return
                    continue
                self.restarts += 1
                failures = 0
                log.warning("tritonserver is back (restart %d, pid %d)", self.restarts,
                            self.server.process.pid if self.server.process else -1)
                break

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Prometheus series for the frontend's /metrics (registered there by `dgate serve`)."""
        yield CounterMetricFamily("dgate_triton_restarts", "Times dgate serve started tritonserver again "
                                  "after it died", value=self.restarts)
        yield CounterMetricFamily("dgate_triton_exits", "Unexpected exits of tritonserver seen by dgate serve",
                                  value=self.exits)
        yield GaugeMetricFamily("dgate_triton_up", "1 while the tritonserver process of dgate serve runs",
                                value=1.0 if self.server.is_running() else 0.0)
