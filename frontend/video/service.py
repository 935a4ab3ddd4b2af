"""What the Videos API routes ask for: queue, remix, read, list and delete jobs, and find their files.

One `VideoService` per app. `open()` (in the app's lifespan) opens the job store, runs recovery once
(jobs left running by a previous process go back to the queue) and starts the worker pool;
`close()` stops the workers and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from dgate.core.limits import check_prompt
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.assets import AssetStore
from dgate.frontend.engine import Engine, ModelNotFound, PipelineCatalog, ServiceUnavailable, resolve_model
from dgate.frontend.errors import OpenAIError
from dgate.frontend.image_store import ImageStore, encode_image
from dgate.frontend.jobs import JobStore, VideoJob, new_job_id, open_job_store
from dgate.frontend.jobs.store import INTERRUPTED, ListOrder
from dgate.frontend.metrics import Metrics
from dgate.frontend.quotas import charge_megapixels, megapixels
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.jobs import JobRunner, WorkerPool, asset_names, delete_assets
from dgate.frontend.video.schemas import (
    Variant,
    VideoCreateRequest,
    check_prompt_length,
    clip_seconds,
    job_params,
    job_request,
)
from dgate.frontend.video.uploads import decode_reference

logger = logging.getLogger(__name__)
SYNC_POLL_S = 0.1  # how often `finished` reads the job store


@runtime_checkable
class CountsByStatus(Protocol):
    """A job store that counts its jobs by status in one query."""

    async def count_by_status(self) -> dict[str, int]: ...


def not_found(video_id: str) -> OpenAIError:
    return OpenAIError(404, f"No video with id '{video_id}' (it may have expired or been deleted)",
                       param="video_id", code="video_not_found")


async def resolve_video_model(engine: PipelineCatalog, requested: str | None,
                              default: str | None) -> tuple[str, ServedPipeline]:
    """`resolve_model`'s choice for videos, as served. A requested model that does not exist is a
    400 here (the request's field is wrong), not the 404 of a missing resource."""
    try:
        name = await resolve_model(engine, requested, default, video=True)
        return name, await engine.served_pipeline(name)
    except ModelNotFound as exc:
        if requested:
            # The same status as the image routes (ModelNotFound -> 404), as OpenAI answers an unknown model.
            raise OpenAIError(404, exc.message, param="model", code="model_not_found") from exc
        raise


def failed(job: VideoJob) -> OpenAIError:
    """A failed job's error as an answer: the job's own message; a 400 when its request was refused."""
    error = job.error or {}
    message = error.get("message") or f"video '{job.id}' failed"
    if error.get("code") == "invalid_request":
        return OpenAIError(400, message, code="invalid_value")
    if error.get("code") == INTERRUPTED:
        return OpenAIError(500, message, type="server_error", code="interrupted")
    return OpenAIError(500, message, type="server_error", code="generation_failed")


def _reference_png(data: bytes, max_pixels: int) -> bytes:
    """Checked, decoded and stored as PNG: the worker (maybe another replica's) reads one known format."""
    return encode_image(decode_reference(data, max_pixels=max_pixels), "png")


class VideoService:
    def __init__(self, settings: FrontendSettings, engine: Engine, assets: AssetStore,
                 images: ImageStore | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings, self._engine, self._assets = settings, engine, assets
        self._images, self._metrics, self._clock = images, metrics, clock
        self._store: JobStore | None = None
        self._pool: WorkerPool | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise ServiceUnavailable("the video job store is not open (the app is starting or stopping)")
        return self._store

    async def open(self) -> None:
        self._store = await open_job_store(self._settings.jobs_db)
        runner = JobRunner(self._store, self._engine, self._assets, self._settings, self._metrics, self._clock)
        self._pool = WorkerPool(self._store, runner, self._assets, self._settings, self._images, self._clock)
        await self._pool.maintain()  # what a previous process left running is requeued now, not in 5 s
        self._pool.start()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.stop()
            self._pool = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- creating jobs ------------------------------------------------------------------------------

    async def create(self, body: VideoCreateRequest, reference: bytes | None, owner: str | None = None) -> VideoJob:
        model, pipeline = await resolve_video_model(self._engine, body.model, self._settings.default_model)
        params, interpolate = body.to_params(pipeline, model=model, has_reference=reference is not None,
                                             max_prompt_chars=self._settings.max_prompt_chars)
        input_png = None
        if reference is not None:
            input_png = await asyncio.to_thread(_reference_png, reference, self._settings.max_input_pixels)
        return await self._enqueue(model, params, interpolate, input_png, owner=owner)

    async def remix(self, video_id: str, prompt: str, owner: str | None = None) -> VideoJob:
        """A new job with the source's request (seed included) and a new prompt."""
        source = await self.get(video_id, owner)
        params, interpolate, input_asset = job_params(source.request)
        if input_asset is None:  # text-to-video: the prompt is what the video shows
            check_prompt(prompt)
        check_prompt_length(prompt, self._settings.max_prompt_chars)
        input_png = None
        if input_asset is not None:
            input_png = await asyncio.to_thread(self._assets.read, input_asset)
            if input_png is None:
                raise OpenAIError(400, f"the input image of '{video_id}' is gone: it cannot be remixed",
                                  param="video_id", code="video_not_remixable")
        return await self._enqueue(source.model, replace(params, prompt=prompt), interpolate, input_png,
                                   remixed_from=source.id, owner=owner)

    async def _enqueue(self, model: str, params: GenerationParams, interpolate: int, input_png: bytes | None,
                       remixed_from: str | None = None, owner: str | None = None) -> VideoJob:
        await self._check_queue(model)
        await charge_megapixels(megapixels(params.num_frames, params.width, params.height))
        job_id = new_job_id()
        input_asset = None
        if input_png is not None:  # written first: a worker never claims a job without its image
            input_asset = asset_names(job_id)["input"]
            await asyncio.to_thread(self._assets.write, input_asset, input_png)
        job = VideoJob(
            id=job_id, model=model, prompt=params.prompt, seconds=clip_seconds(params.num_frames, params.fps),
            size=f"{params.width}x{params.height}", created_at=int(self._clock()),
            request=job_request(params, interpolate, input_asset), remixed_from_video_id=remixed_from,
            owner=owner,
        )
        try:
            await self.store.create(job)
        except BaseException:
            if input_asset is not None:
                await asyncio.to_thread(self._assets.delete, input_asset)
            raise
        if self._pool is not None:
            self._pool.wake()
        return job

    async def _check_queue(self, model: str) -> None:
        """A 429 `queue_full` when DGATE_MAX_QUEUED_VIDEO_JOBS jobs wait already (read, then created: replicas
        racing may pass the bound by a few)."""
        bound = self._settings.max_queued_video_jobs
        if await self.store.count_queued() < bound:
            return
        if self._metrics is not None:
            self._metrics.admission_refusals.labels(model=model, kind="video").inc()
        retry_after_s = self._settings.retry_after_s
        raise OpenAIError(429, f"{bound} video jobs are queued already, the bound: retry after {retry_after_s} s",
                          type="server_error", code="queue_full", headers={"Retry-After": str(retry_after_s)})

    async def job_states(self) -> dict[str, int] | None:
        """Jobs by status in the store (all replicas'), for the `dgate_frontend_video_jobs` gauge: every
        status where the store counts them in one query, else the queued ones; None while the store is
        closed or unreachable (a scrape must not fail for it)."""
        store = self._store
        if store is None:
            return None
        try:
            if isinstance(store, CountsByStatus):
                return await store.count_by_status()
            return {"queued": await store.count_queued()}
        except Exception:
            logger.warning("could not count the video jobs by status", exc_info=True)
            return None

    # -- reading and deleting: `owner` set (an API key's), another owner's job is a 404 ----------------

    async def get(self, video_id: str, owner: str | None = None) -> VideoJob:
        job = await self.store.get(video_id)
        if job is None or (owner is not None and job.owner != owner):
            raise not_found(video_id)
        return job

    async def page(self, *, after: str | None, limit: int, order: ListOrder,
                   owner: str | None = None) -> tuple[list[VideoJob], bool]:
        try:
            return await self.store.list(after=after, limit=limit, order=order, owner=owner)
        except ValueError as exc:
            raise OpenAIError(400, str(exc), param="after", code="invalid_value") from exc

    async def delete(self, video_id: str, owner: str | None = None) -> VideoJob:
        """Removes the job and its files; a worker running it stops at its next progress report."""
        if owner is not None:
            await self.get(video_id, owner)  # owners never change: checked, then deleted
        job = await self.store.delete(video_id)
        if job is None:
            raise not_found(video_id)
        await asyncio.to_thread(delete_assets, self._assets, job.id)
        return job

    async def finished(self, video_id: str, *, timeout_s: float, poll_s: float = SYNC_POLL_S) -> Path:
        """`POST /v1/videos/sync`: the MP4 of a job once it completes (any replica may run it, so the store
        is polled). A failed job is its error; past `timeout_s` a 504 names the job, which goes on (its
        video is fetched as any other's); a caller cancelled (its client gone) deletes the job, which
        stops it in Triton within a step."""
        try:
            async with asyncio.timeout(timeout_s):
                job = await self.get(video_id)
                while job.status in ("queued", "in_progress"):
                    await asyncio.sleep(poll_s)
                    job = await self.get(video_id)
        except TimeoutError:
            raise OpenAIError(504, f"video '{video_id}' did not finish within the request deadline "
                              f"({timeout_s:g} s, DGATE_REQUEST_TIMEOUT_S); it goes on: poll GET /v1/videos/"
                              f"{video_id}", type="server_error", code="timeout") from None
        except asyncio.CancelledError:
            with contextlib.suppress(OpenAIError):
                await self.delete(video_id)
            raise
        if job.status == "failed":
            raise failed(job)
        return await self.content(video_id, "video")

    async def content(self, video_id: str, variant: Variant, owner: str | None = None) -> Path:
        job = await self.get(video_id, owner)
        if job.status != "completed":
            raise OpenAIError(400, f"video '{video_id}' is {job.status}; its content is ready once it is "
                              "completed", param="video_id", code="video_not_ready")
        name = job.assets.get(variant)
        path = None if name is None else await asyncio.to_thread(self._assets.path, name)
        if path is None:
            raise OpenAIError(404, f"the {variant} of '{video_id}' is gone (expired or deleted)",
                              param="video_id", code="video_not_found")
        return path
