"""The Videos API job record and the one interface both job stores implement (SQLite, PostgreSQL).

A job is created by `POST /v1/videos`, claimed by one worker under a lease, and polled by
`GET /v1/videos/{id}`. The lease is what makes a crashed worker recoverable: `recover()` requeues
the jobs whose lease ran out. Leases are wall-clock times (`time.time()`), so replicas that share a
PostgreSQL store need synchronised clocks (NTP); a lease of a minute dwarfs the usual skew.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JobStatus = Literal["queued", "in_progress", "completed", "failed"]
STATUSES: tuple[JobStatus, ...] = ("queued", "in_progress", "completed", "failed")
ListOrder = Literal["asc", "desc"]

# The error code of a job whose worker vanished more often than `recover(max_attempts=...)` allows.
INTERRUPTED = "interrupted"
INTERRUPTED_MESSAGE = "The video job was interrupted (its worker stopped) too many times."

# Table names are spliced into SQL, so they are plain identifiers only.
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
DEFAULT_TABLE = "video_jobs"


@dataclass
class VideoJob:
    id: str                      # "video_" + 32 hex chars (new_job_id())
    model: str
    prompt: str
    seconds: str                 # as the OpenAI API carries it ("4")
    size: str                    # "WxH"
    created_at: int              # unix seconds
    request: dict[str, Any]      # the worker's normalized parameters (JSON-serialisable)
    status: JobStatus = "queued"
    progress: int = 0            # 0..100
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, str] | None = None       # {"code": ..., "message": ...}
    remixed_from_video_id: str | None = None
    # variant ("video" | "thumbnail" | "spritesheet") -> asset file name
    assets: dict[str, str] = field(default_factory=dict)
    attempts: int = 0            # claims so far
    worker_id: str | None = None  # the lease owner while in_progress
    lease_expires_at: float | None = None
    owner: str | None = None     # the API key's id (frontend/auth.py) that created it; None: auth was off


def new_job_id() -> str:
    """OpenAI's shape (`video_` + hex); 128 random bits, so ids are unguessable as well as unique."""
    return "video_" + secrets.token_hex(16)


class JobStore(Protocol):
    """Durable video jobs. Every state change a worker makes names its `worker_id` and succeeds only
    while that worker still holds the job, so a deleted or requeued job cannot be overwritten by a
    worker that lost it (the call returns False and the worker stops)."""

    async def create(self, job: VideoJob) -> None:
        """Insert a new job; ValueError if its id exists already."""

    async def get(self, job_id: str) -> VideoJob | None: ...

    async def count_queued(self) -> int:
        """Jobs waiting for a worker (all replicas'): what the queue bound of new jobs reads."""

    async def count_by_status(self) -> dict[str, int]:
        """Jobs by status (all replicas'), every status present (0 included): the gauge of /metrics."""

    async def list(self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc",
                   owner: str | None = None) -> tuple[list[VideoJob], bool]:
        """(page, has_more) in creation order; `after` is a job id and the page starts just after it
        in `order`. Unknown `after` -> ValueError. `owner` set: that owner's jobs only (`after` too)."""

    async def claim(self, worker_id: str, lease_s: float) -> VideoJob | None:
        """The oldest queued job -> in_progress, attempts + 1, leased to `worker_id`; None if none."""

    async def progress(self, job_id: str, worker_id: str, progress: int, lease_s: float) -> bool:
        """Record progress and renew the lease; False if the job is no longer this worker's."""

    async def complete(self, job_id: str, worker_id: str, assets: dict[str, str], expires_at: int) -> bool:
        """Status completed, progress 100, completed_at now; False if the job is no longer this worker's."""

    async def release(self, job_id: str, worker_id: str) -> bool:
        """A running job back to the queue at once (its replica is shutting down): not counted as an
        attempt, lease released; False if the job is no longer this worker's."""

    async def fail(self, job_id: str, worker_id: str | None, code: str, message: str, *,
                   expires_at: int | None = None) -> bool:
        """Status failed with `error`. `worker_id` None fails a queued or in-progress job regardless of
        its owner (e.g. validation before claiming). `expires_at` lets `expired()` clean it up later."""

    async def delete(self, job_id: str) -> VideoJob | None:
        """Remove the job whatever its state and return it (its assets are the caller's to delete)."""

    async def recover(self, *, max_attempts: int, failed_expires_at: int | None = None) -> tuple[int, int]:
        """(requeued, failed): in-progress jobs whose lease expired go back to the queue while
        attempts < max_attempts, and fail with code `interrupted` otherwise."""

    async def expired(self, now: int) -> builtins.list[VideoJob]:  # `list` is a method here
        """Completed or failed jobs with expires_at <= now, oldest first."""

    async def close(self) -> None: ...


# -- shared by both implementations: one row layout, JSON text for the dict fields --------------

COLUMNS: tuple[str, ...] = (
    "id", "model", "prompt", "seconds", "size", "created_at", "request", "status", "progress",
    "completed_at", "expires_at", "error", "remixed_from_video_id", "assets", "attempts", "worker_id",
    "lease_expires_at", "owner",
)
# Columns added after the first schema: a store adds them (NULL for the old rows) when it opens a database.
ADDED_COLUMNS: dict[str, str] = {"owner": "TEXT"}
_JSON_COLUMNS = frozenset({"request", "error", "assets"})


def check_table_name(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"job table name {table!r} must match {_TABLE_NAME.pattern}")
    return table


def check_list_args(limit: int, order: str) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")


def check_progress(progress: int) -> None:
    if not 0 <= progress <= 100:
        raise ValueError(f"progress must be within 0..100, got {progress}")


def dump_json(value: dict[str, Any] | None) -> str | None:
    """How the dict fields are stored: compact JSON text, None as NULL."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


def job_to_row(job: VideoJob) -> dict[str, Any]:
    """Column -> value, with the dict fields as JSON text."""
    row: dict[str, Any] = {name: getattr(job, name) for name in COLUMNS}
    for name in _JSON_COLUMNS:
        row[name] = dump_json(row[name])
    return row


def job_from_row(row: Mapping[str, Any]) -> VideoJob:
    """The inverse of `job_to_row`; extra columns (the insertion sequence) are ignored."""
    values = {name: row[name] for name in COLUMNS}
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return VideoJob(**values)


def interrupted_error() -> dict[str, str]:
    return {"code": INTERRUPTED, "message": INTERRUPTED_MESSAGE}
