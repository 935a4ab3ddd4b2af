"""Prometheus metrics of the frontend, in an own CollectorRegistry (several apps per process in tests).

Routes are labelled by their template (`/v1/files/{file_id}`), never the raw path, so label
cardinality stays bounded; unmatched paths share the label `unmatched`.

Generation metrics come from one `GenerationRecord` per finished image request or video job
(`Metrics.record`), which also feeds the optional serving log (frontend/serving_log.py), so both
sinks see the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dgate.core.params import GenerationParams

# Image generation takes from ~10 ms (tiny test pipelines) to minutes (large models, many steps).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# A generation (or a video job, queue included) takes a fraction of a second to many minutes.
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
Kind = Literal["image", "video"]
OK = "ok"
JOB_STATES = ("queued", "in_progress", "completed", "failed")


@dataclass
class GenerationRecord:
    """One image request (HTTP unary or streamed, WebSocket) or video job, as it ended. Times in seconds;
    None: the request did not get that far (refused before Triton, say)."""

    model: str
    kind: Kind
    params: GenerationParams | None = None
    status: str = OK  # "ok" or the error code (`pipeline_busy`, `generation_failed`, `cancelled`, ...)
    total_s: float | None = None  # accepted (job created) -> answer sent (job finished)
    queue_s: float | None = None  # accepted (created) -> handed to Triton (claimed by a worker)
    triton_s: float | None = None
    encode_s: float | None = None
    edits: int = 0  # input images of an edit (one engine call each); 0: a generation
    images: int = 0  # images made (ok only)
    frames: int = 0  # video frames made (ok only)
    sample: np.ndarray | None = None  # one output image [H, W, 3] uint8, for the serving log's samples
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def steps(self) -> int:
        """Denoising steps run: an edit's strength skips the first ones, each input image is one run."""
        if self.params is None:
            return 0
        steps = self.params.num_inference_steps
        if self.edits:
            steps = min(steps, int(steps * self.params.strength))
        return steps * max(1, self.edits)

    @property
    def megapixels(self) -> float:
        if self.params is None:
            return 0.0
        return (self.images + self.frames) * self.params.width * self.params.height / 1e6

    @property
    def adapters(self) -> int:
        """LoRA adapters the request applied (`params.lora` is encode_adapters' JSON list)."""
        if self.params is None or not self.params.lora:
            return 0
        try:
            entries = json.loads(self.params.lora)
        except ValueError:
            return 0
        return len(entries) if isinstance(entries, list) else 0


class RecordSink(Protocol):
    def submit(self, record: GenerationRecord) -> None:
        """Take the record without blocking (the request path calls it)."""


class _StateGauge(Collector):
    """`dgate_frontend_video_jobs{state}`: jobs by state in the job store, as last counted (on each scrape).

    A plain collector, not a `Gauge`: the registry would refuse the name beside the older counter
    `dgate_frontend_video_jobs` (exposed as `dgate_frontend_video_jobs_total`); the exposed series differ."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("dgate_frontend_video_jobs", "Video jobs in the job store by state (all "
                                   "replicas'), counted at each scrape", labels=["state"])
        for state, count in sorted(self.counts.items()):
            family.add_metric([state], count)
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sinks: list[RecordSink] = []
        self.requests = Counter(
            "dgate_frontend_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dgate_frontend_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "dgate_frontend_images_generated", "Images returned to clients", ["model"], registry=self.registry
        )
        self.video_jobs = Counter(
            "dgate_frontend_video_jobs", "Video jobs this replica finished", ["model", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dgate_frontend_requests_in_flight", "HTTP requests being answered", registry=self.registry
        )
        # Admission control (frontend/admission.py): this replica's image requests per pipeline, and the
        # requests refused because a pipeline's bound (kind image) or the video queue (kind video) was full.
        self.pipeline_in_flight = Gauge(
            "dgate_frontend_pipeline_requests_in_flight", "Image requests admitted and not yet finished",
            ["model"], registry=self.registry,
        )
        self.admission_refusals = Counter(
            "dgate_frontend_admission_refusals", "Requests refused with 429 because their pipeline or the "
            "video queue was full", ["model", "kind"], registry=self.registry,
        )
        # Generations (GenerationRecord): kind "image" (HTTP, streamed, WebSocket) or "video" (jobs).
        self.generation = Histogram(
            "dgate_frontend_generation_seconds", "Image request from accepted to answered (last event sent), or "
            "video job from created to finished; status ok or the error code", ["model", "kind", "status"],
            buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.queue = Histogram(
            "dgate_frontend_queue_seconds", "Time in the frontend before the work went to Triton (images: "
            "admission, quota, decoding; videos: waiting for a worker)", ["model", "kind"],
            buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.triton = Histogram(
            "dgate_frontend_triton_seconds", "Time in Triton (the engine call)", ["model", "kind"],
            buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.encode = Histogram(
            "dgate_frontend_encode_seconds", "Time encoding images (PNG/JPEG/WebP, base64) or video files",
            ["model", "kind"], buckets=GENERATION_BUCKETS, registry=self.registry,
        )
        self.steps = Counter(
            "dgate_frontend_steps", "Denoising steps run by finished generations", ["model", "kind"],
            registry=self.registry,
        )
        self.megapixels = Counter(
            "dgate_frontend_megapixels_generated", "Megapixels generated (images, or video frames, x width x "
            "height)", ["model", "kind"], registry=self.registry,
        )
        self.video_frames = Counter(
            "dgate_frontend_video_frames", "Video frames generated (before interpolation)", ["model"],
            registry=self.registry,
        )
        self.lora_adapters = Counter(
            "dgate_frontend_lora_adapters_used", "LoRA adapters applied by finished generations (per request)",
            ["model"], registry=self.registry,
        )
        self.lora_switches = Counter(
            "dgate_frontend_lora_switches", "Changes of a pipeline's active adapter set through the LoRA routes",
            ["model"], registry=self.registry,
        )
        self.wandb_dropped = Counter(
            "dgate_frontend_wandb_dropped", "Serving-log records not logged to W&B (reason queue_full: the "
            "logger fell behind; error: W&B refused them)", ["reason"], registry=self.registry,
        )
        self._job_states = _StateGauge()
        self.registry.register(self._job_states)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(method=method, route=route).observe(seconds)

    def record(self, record: GenerationRecord) -> None:
        """One finished generation -> the histograms, the counters (work done: ok only) and the sinks."""
        model, kind = record.model, record.kind
        if record.total_s is not None:
            self.generation.labels(model=model, kind=kind, status=record.status).observe(record.total_s)
        for histogram, seconds in ((self.queue, record.queue_s), (self.triton, record.triton_s),
                                   (self.encode, record.encode_s)):
            if seconds is not None:
                histogram.labels(model=model, kind=kind).observe(max(0.0, seconds))
        if record.ok:
            self.steps.labels(model=model, kind=kind).inc(record.steps)
            self.megapixels.labels(model=model, kind=kind).inc(record.megapixels)
            if record.images:
                self.images.labels(model=model).inc(record.images)
            if record.frames:
                self.video_frames.labels(model=model).inc(record.frames)
            if record.adapters:
                self.lora_adapters.labels(model=model).inc(record.adapters)
        for sink in self.sinks:
            sink.submit(record)

    def lora_switched(self, *models: str) -> None:
        for model in models:
            self.lora_switches.labels(model=model).inc()

    def set_job_states(self, counts: Mapping[str, int]) -> None:
        """The job store's counts by state; the states it did not count are left out, not shown as 0."""
        self._job_states.counts = {state: int(counts[state]) for state in JOB_STATES if state in counts}

    def render(self) -> bytes:
        return generate_latest(self.registry)
