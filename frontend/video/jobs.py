"""The video worker pool and the runner of one job.

Each replica runs `video_workers` asyncio workers. A worker claims the oldest queued job in the
shared job store under a lease (`job_lease_s`), runs it through the engine, encodes the media in a
thread, writes the files to the shared assets directory and completes the job. Every store write
names the worker, so a job deleted (DELETE) or requeued (lease lost) while it runs is noticed at the
next progress report or lease renewal, and the engine call is cancelled, which cancels the Triton
stream. A replica that dies keeps its leases until they expire: `recover()`, run at startup and every
`video_maintenance_s` by every replica, requeues those jobs, or fails them as `interrupted` after
`video_max_attempts` claims. A replica that stops cleanly (SIGTERM) requeues its running jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dgate.core.errors import InvalidRequestError
from dgate.frontend.assets import AssetStore
from dgate.frontend.engine import EngineError, VideoEngine
from dgate.frontend.image_store import ImageStore
from dgate.frontend.jobs import JobStore, VideoJob
from dgate.frontend.metrics import GenerationRecord, Metrics
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.encoding import encode_mp4, spritesheet, thumbnail
from dgate.frontend.video.interpolation import interpolate_frames, output_fps
from dgate.frontend.video.schemas import Variant, job_params

logger = logging.getLogger(__name__)

# Spritesheet tiles at most this wide: 16 full-size 1024 px frames would make a 4096 px sheet.
SPRITE_TILE_WIDTH = 256
INTERNAL_FAILURE = "The video could not be generated because of an internal error (see the frontend log)."


def asset_names(job_id: str) -> dict[Variant | str, str]:
    """Every file a job may own, by variant (+ "input"): derived from the id, so a job requeued after a
    crash mid-write, whose record names no files, still has its strays deleted with it."""
    return {"video": f"{job_id}.mp4", "thumbnail": f"{job_id}.thumbnail.webp",
            "spritesheet": f"{job_id}.spritesheet.jpg", "input": f"{job_id}.input.png"}


def expiry(now: float, ttl_s: int) -> int:
    """Unix seconds at which a job finished at `now` expires: rounded up, so it never lives less than `ttl_s`."""
    return math.ceil(now + ttl_s)


def delete_assets(assets: AssetStore, job_id: str) -> None:
    for name in asset_names(job_id).values():
        assets.delete(name)


@dataclass(frozen=True)
class Media:
    video: bytes
    thumbnail: bytes
    spritesheet: bytes


def render_media(frames: np.ndarray, fps: int, interpolate: int) -> Media:
    """Frames -> the three downloadable files (CPU-bound: run in a thread)."""
    rate: float = fps
    if interpolate > 1:
        frames, rate = interpolate_frames(frames, interpolate), output_fps(fps, interpolate)
    sheet, _ = spritesheet(frames, tile_width=min(frames.shape[2], SPRITE_TILE_WIDTH))
    return Media(encode_mp4(frames, rate), thumbnail(frames), sheet)


def failure_of(exc: Exception) -> tuple[str, str]:
    """A job's `error` (code, message): the engine's own message, never a traceback."""
    if isinstance(exc, InvalidRequestError):
        return "invalid_request", exc.message
    if isinstance(exc, EngineError):
        return "generation_failed", exc.message
    logger.error("video job failed unexpectedly", exc_info=exc)
    return "generation_failed", INTERNAL_FAILURE


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class _Lease:
    """One claimed job's lease: renewed by every progress report, and in the background whenever a
    denoising step (or the encoding) takes longer than a third of it. `on_lost` runs once when the
    store says the job is no longer this worker's (deleted or requeued)."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, lease_s: float,
                 on_lost: Callable[[], object]) -> None:
        self._store, self._job_id, self._worker_id, self._lease_s = store, job_id, worker_id, lease_s
        self._on_lost = on_lost
        self._renewed = time.monotonic()
        self.progress = 0
        self.lost = False

    async def report(self, fraction: float) -> None:
        """The engine's `on_progress`: 0..1 -> 0..99 (100 means the files are there)."""
        self.progress = max(self.progress, min(99, int(fraction * 100)))
        await self._renew()

    async def _renew(self) -> None:
        if self.lost:
            return
        try:
            owned = await self._store.progress(self._job_id, self._worker_id, self.progress, self._lease_s)
        except Exception:  # a store hiccup: the background renewal tries again
            logger.warning("could not renew the lease of %s", self._job_id, exc_info=True)
            return
        self._renewed = time.monotonic()
        if not owned:
            logger.info("video job %s was deleted or requeued: stopping it", self._job_id)
            self.lost = True
            self._on_lost()

    async def keep_alive(self) -> None:
        period = self._lease_s / 3
        while not self.lost:
            await asyncio.sleep(max(0.0, self._renewed + period - time.monotonic()))
            if time.monotonic() - self._renewed >= period:
                await self._renew()


class JobRunner:
    """Runs one claimed job to completed or failed (see the module docstring)."""

    def __init__(self, store: JobStore, engine: VideoEngine, assets: AssetStore, settings: FrontendSettings,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store, self._engine, self._assets, self._settings = store, engine, assets, settings
        self._metrics = metrics
        self._clock = clock

    def _expires_at(self) -> int:
        return expiry(self._clock(), self._settings.video_ttl_s)

    async def run(self, job: VideoJob, worker_id: str) -> None:
        work: asyncio.Task[Media] | None = None

        def stop() -> None:
            if work is not None:
                work.cancel()

        lease = _Lease(self._store, job.id, worker_id, self._settings.job_lease_s, stop)
        # Queued from its creation until this claim (a requeued job: its earlier runs too).
        record = GenerationRecord(model=job.model, kind="video", queue_s=self._clock() - job.created_at)
        work = asyncio.create_task(self._generate(job, lease, record))
        keeper = asyncio.create_task(lease.keep_alive())
        try:
            media = await work
            names = await asyncio.to_thread(self._write, job.id, media)
            if await self._store.complete(job.id, worker_id, names, expires_at=self._expires_at()):
                self._count(job, "completed", record)
            elif await self._store.get(job.id) is None:  # deleted while the files were written
                await asyncio.to_thread(delete_assets, self._assets, job.id)
            else:  # requeued: the files are the next run's to replace
                logger.info("video job %s finished after its lease was lost", job.id)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The pool is stopping (a drain, a shutdown): the job goes back to the queue now, for
                # another replica or the next start, instead of waiting for its lease to run out.
                work.cancel()
                await asyncio.shield(self._release(job, worker_id))
                raise
            if not lease.lost:  # cancelled from below (not by us): a failure, and the worker goes on
                await self._fail(job, worker_id, EngineError("the generation was cancelled"), record)
        except Exception as exc:
            await self._fail(job, worker_id, exc, record)
        finally:
            keeper.cancel()
            work.cancel()

    async def _generate(self, job: VideoJob, lease: _Lease, record: GenerationRecord) -> Media:
        params, interpolate, input_asset = job_params(job.request)
        record.params = params
        image = None
        if input_asset is not None:
            data = await asyncio.to_thread(self._assets.read, input_asset)
            if data is None:
                raise EngineError(f"the input image of {job.id} is missing from the assets directory")
            image = await asyncio.to_thread(_decode_png, data)
        started = time.perf_counter()
        frames = await self._engine.generate_video(job.model, params, image, lease.report)
        encoding = time.perf_counter()
        record.triton_s, record.frames = encoding - started, len(frames)
        record.sample = frames[0] if len(frames) else None
        media = await asyncio.to_thread(render_media, frames, params.fps, interpolate)
        record.encode_s = time.perf_counter() - encoding
        return media

    def _write(self, job_id: str, media: Media) -> dict[str, str]:
        names = asset_names(job_id)
        written: dict[str, str] = {}
        for variant, data in (("video", media.video), ("thumbnail", media.thumbnail),
                              ("spritesheet", media.spritesheet)):
            self._assets.write(names[variant], data)
            written[variant] = names[variant]
        return written

    async def _release(self, job: VideoJob, worker_id: str) -> None:
        try:
            if await self._store.release(job.id, worker_id):
                logger.info("video job %s requeued: this replica is stopping", job.id)
        except Exception:  # the lease runs out and recover() takes the job back
            logger.exception("could not requeue video job %s", job.id)

    async def _fail(self, job: VideoJob, worker_id: str, exc: Exception, record: GenerationRecord) -> None:
        code, message = failure_of(exc)
        logger.info("video job %s failed: %s: %s", job.id, code, message)
        try:
            if await self._store.fail(job.id, worker_id, code, message, expires_at=self._expires_at()):
                record.status, record.frames = code, 0
                self._count(job, "failed", record)
        except Exception:  # the lease runs out and recover() takes the job back
            logger.exception("could not record the failure of video job %s", job.id)

    def _count(self, job: VideoJob, status: str, record: GenerationRecord) -> None:
        """A job this worker finished: counted, and recorded from its creation until now."""
        if self._metrics is not None:
            self._metrics.video_jobs.labels(model=job.model, status=status).inc()
            record.total_s = max(0.0, self._clock() - job.created_at)
            self._metrics.record(record)


def new_worker_id() -> str:
    """Unique across replicas and restarts; host and pid make the store's rows readable."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class WorkerPool:
    """`video_workers` workers and one maintenance task on this replica's event loop."""

    def __init__(self, store: JobStore, runner: JobRunner, assets: AssetStore, settings: FrontendSettings,
                 images: ImageStore | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store, self._runner, self._assets, self._settings = store, runner, assets, settings
        self._images = images
        self._clock = clock
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for _ in range(self._settings.video_workers):
            worker_id = new_worker_id()
            self._tasks.append(asyncio.create_task(self._work(worker_id), name=f"video-worker-{worker_id}"))
        self._tasks.append(asyncio.create_task(self._maintain_forever(), name="video-maintenance"))

    def wake(self) -> None:
        """A job was queued here: idle workers claim it now instead of at their next poll."""
        self._wake.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self, worker_id: str) -> None:
        while True:
            self._wake.clear()  # before claiming: a job queued after the claim sets it again
            try:
                job = await self._store.claim(worker_id, self._settings.job_lease_s)
            except Exception:
                logger.exception("video worker %s could not claim a job", worker_id)
                job = None
            if job is None:
                # Jobs queued by other replicas are seen at the next poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.video_idle_poll_s)
                continue
            logger.info("video worker %s runs %s (attempt %d)", worker_id, job.id, job.attempts)
            try:
                await self._runner.run(job, worker_id)
            except Exception:  # a bug in the runner must not take the worker down with the job
                logger.exception("video worker %s failed running %s", worker_id, job.id)

    async def maintain(self) -> None:
        """Requeue (or fail) the jobs of dead workers and collect expired jobs, files and `url` images."""
        clock = self._clock()
        now = int(clock)
        requeued, failed = await self._store.recover(max_attempts=self._settings.video_max_attempts,
                                                     failed_expires_at=expiry(clock, self._settings.video_ttl_s))
        if requeued or failed:
            logger.warning("video jobs of stopped workers: %d requeued, %d failed as interrupted", requeued, failed)
            self.wake()
        for job in await self._store.expired(now):
            # The record goes first: a client sees a 404, never a completed job whose files are gone.
            await self._store.delete(job.id)
            await asyncio.to_thread(delete_assets, self._assets, job.id)
        if self._images is not None:
            await asyncio.to_thread(self._images.collect)

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.video_maintenance_s)
            try:
                await self.maintain()
            except Exception:
                logger.exception("video job maintenance failed")
