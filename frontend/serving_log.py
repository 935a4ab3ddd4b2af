"""Opt-in serving log to Weights & Biases (DGATE_WANDB_PROJECT): one row per image request or video
job (model, size, n, steps, guidance, scheduler, seed, strength, adapters, status, latencies) and one
output image every DGATE_WANDB_SAMPLE_EVERY records.

Off the request path: `submit` (called by `Metrics.record`, with the same `GenerationRecord` the
Prometheus metrics read) only puts the record on a bounded queue; one background thread owns the W&B
run and logs what the queue holds. A full queue drops the record (counted in
`dgate_frontend_wandb_dropped_total{reason="queue_full"}`), so a slow or unreachable W&B never slows
or fails a request. W&B's own service process batches the uploads.

The default mode is offline: the run is written under DGATE_WANDB_DIR and nothing reaches the network
(`wandb sync <run folder>` uploads it later); `online` needs a W&B key (WANDB_API_KEY). Prompts are not
logged (user content); the sampled images are. wandb is imported only when the log is on; an image
without it (the frontend image need not carry it) logs an error at start and serves without the log.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from dgate.frontend.metrics import GenerationRecord, Metrics
from dgate.frontend.settings import FrontendSettings

logger = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 30.0  # at shutdown, how long the rows still queued may take to be written


class RunWriter(Protocol):
    """The run the background thread writes to (a W&B run; a test's own)."""

    def log(self, row: dict[str, Any], image: np.ndarray | None) -> None: ...

    def close(self) -> None: ...


class WandbWriter:
    """One W&B run for this frontend process (made in the logging thread: wandb.init takes a while)."""

    def __init__(self, project: str, mode: Literal["offline", "online"], directory: str) -> None:
        import wandb  # only when the log is on: the frontend image may not carry it

        Path(directory).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(project=project, mode=mode, dir=directory, job_type="serving",
                               config={"replica": socket.gethostname()},
                               settings=wandb.Settings(console="off", silent=True))

    def log(self, row: dict[str, Any], image: np.ndarray | None) -> None:
        data: dict[str, Any] = dict(row)
        if image is not None:
            data["sample"] = self._wandb.Image(image, caption=f"{row['model']} seed {row.get('seed')}")
        self._run.log(data)

    def close(self) -> None:
        self._run.finish()


def record_row(record: GenerationRecord) -> dict[str, Any]:
    """The logged fields of a record; what is unknown (a request refused before Triton) is left out."""
    row: dict[str, Any] = {"model": record.model, "kind": record.kind, "status": record.status,
                           "latency_s": record.total_s, "queue_s": record.queue_s, "triton_s": record.triton_s,
                           "encode_s": record.encode_s, "request_id": record.request_id}
    params = record.params
    if params is not None:
        row |= {"width": params.width, "height": params.height, "n": params.num_images,
                "steps": params.num_inference_steps, "guidance": params.guidance_scale,
                "scheduler": params.scheduler, "seed": params.seed, "lora": params.lora, "edits": record.edits,
                "steps_run": record.steps, "megapixels": record.megapixels}
        if params.strength != 1.0:
            row["strength"] = params.strength
        if record.kind == "video":
            row |= {"frames": params.num_frames, "fps": params.fps}
    return {key: value for key, value in row.items() if value is not None}


_STOP = object()


class ServingLog:
    """The bounded queue and the thread that drains it into a `RunWriter` (see the module docstring)."""

    def __init__(self, metrics: Metrics, open_writer: Callable[[], RunWriter], *, sample_every: int = 100,
                 queue_size: int = 1000) -> None:
        self._metrics, self._open_writer, self._sample_every = metrics, open_writer, sample_every
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._count = itertools.count()
        self._thread: threading.Thread | None = None
        self._open = False

    @classmethod
    def from_settings(cls, settings: FrontendSettings, metrics: Metrics) -> ServingLog | None:
        """The log DGATE_WANDB_PROJECT asks for; None when unset, or (an error logged) without wandb."""
        project = settings.wandb_project
        if not project:
            return None
        if importlib.util.find_spec("wandb") is None:
            logger.error("DGATE_WANDB_PROJECT is set but wandb is not installed (pip install wandb): "
                         "serving without the W&B log")
            return None
        mode, directory = settings.wandb_mode, settings.wandb_dir
        return cls(metrics, lambda: WandbWriter(project, mode, directory), sample_every=settings.wandb_sample_every,
                   queue_size=settings.wandb_queue_size)

    def start(self) -> None:
        self._open = True
        self._thread = threading.Thread(target=self._drain, name="dgate-serving-log", daemon=True)
        self._thread.start()

    def submit(self, record: GenerationRecord) -> None:
        """Never blocks: a full queue (or a closed log) drops the record and counts it."""
        if not self._open:
            return
        index = next(self._count)
        sampled = self._sample_every > 0 and index % self._sample_every == 0 and record.ok
        try:
            self._queue.put_nowait((record, sampled))
        except queue.Full:
            self._metrics.wandb_dropped.labels(reason="queue_full").inc()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued and finish the run; blocking (call it in a thread), bounded by `timeout_s`."""
        if self._thread is None:
            return
        self._open = False
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            logger.warning("the W&B serving log is stuck: %d rows not written", self._queue.qsize())
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("the W&B serving log did not finish within %g s", timeout_s)
        self._thread = None

    def _drain(self) -> None:
        try:
            writer = self._open_writer()
        except Exception:
            logger.exception("the W&B run could not start: serving without the W&B log (rows dropped)")
            self._discard()
            return
        logger.info("W&B serving log on")
        failing = False
        while (item := self._queue.get()) is not _STOP:
            record, sampled = item
            try:
                writer.log(record_row(record), record.sample if sampled else None)
                failing = False
            except Exception:
                self._metrics.wandb_dropped.labels(reason="error").inc()
                if not failing:  # once per run of failures, not once per row
                    logger.warning("W&B refused a serving-log row", exc_info=True)
                failing = True
        try:
            writer.close()
        except Exception:
            logger.exception("the W&B run did not finish cleanly")

    def _discard(self) -> None:
        """Empty the queue (the run never started) until close() puts its stop."""
        while self._queue.get() is not _STOP:
            self._metrics.wandb_dropped.labels(reason="error").inc()
