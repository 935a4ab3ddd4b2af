"""Prometheus metrics of the frontend, in an own CollectorRegistry (several apps per process in tests).

Routes are labelled by their template (`/v1/files/{file_id}`), never the raw path, so label
cardinality stays bounded; unmatched paths share the label `unmatched`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Image generation takes from ~10 ms (tiny test pipelines) to minutes (large models, many steps).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(method=method, route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
