"""What every image route (generations, edits, variations, the WebSocket) shares: choosing the
pipeline, running a request's engine calls, and answering with an `ImagesResponse` or a stream of
image events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Request, Response
from starlette.types import Receive, Scope, Send

from dgate.core.errors import InvalidRequestError
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.admission import Slot
from dgate.frontend.disconnect import unless_disconnected
from dgate.frontend.engine import EditImages, ImageEngine, PartialCallback, StepCallback, resolve_model
from dgate.frontend.errors import OpenAIError, from_exception
from dgate.frontend.image_store import encode_batch, to_base64
from dgate.frontend.metrics import GenerationRecord
from dgate.frontend.quotas import charge_megapixels, megapixels
from dgate.frontend.schemas import (
    ImageCompletedEvent,
    ImageData,
    ImageGenerationRequest,
    ImagePartialImageEvent,
    ImagesResponse,
)
from dgate.frontend.state import AppState
from dgate.frontend.streaming import EventStreamResponse, event_stream, sse_event

T = TypeVar("T")
EventKind = Literal["image_generation", "image_edit"]
# When this request's image pipeline was chosen (time.perf_counter()): the start of its generation time
# and its time queued in the frontend (decoding an edit's uploads, admission, the quota). Every image
# route chooses its pipeline first; each request runs in its own context, so the value is its own.
_ACCEPTED: ContextVar[float | None] = ContextVar("dgate_image_accepted", default=None)


def accepted_at() -> float:
    """When the current image request was accepted (now when no pipeline was chosen in this context)."""
    accepted = _ACCEPTED.get()
    return time.perf_counter() if accepted is None else accepted


def status_of(exc: BaseException) -> str:
    """A record's status for a failure: the client's error code, `cancelled`, or the exception's class."""
    if not isinstance(exc, Exception):  # CancelledError: the client went away, or a shutdown
        return "cancelled"
    return from_exception(exc).code or type(exc).__name__


class Timing:
    """A request's `GenerationRecord` as it runs: stamps and sums on the perf_counter clock."""

    def __init__(self, record: GenerationRecord, accepted: float) -> None:
        self.record, self.accepted = record, accepted

    def to_triton(self) -> float:
        """The work goes to Triton now: the time queued so far is the record's."""
        now = time.perf_counter()
        self.record.queue_s = now - self.accepted
        return now

    def add_encode(self, started: float) -> None:
        self.record.encode_s = (self.record.encode_s or 0.0) + time.perf_counter() - started

    def generated(self, images: np.ndarray, sent: float, encode_before: float) -> None:
        """Triton answered `images` for the call sent at `sent`; encoding since (previews) is not Triton's."""
        record = self.record
        record.triton_s = time.perf_counter() - sent - ((record.encode_s or 0.0) - encode_before)
        record.images, record.sample = len(images), images[0] if len(images) else None

    def finish(self, metrics_record: Callable[[GenerationRecord], None], exc: BaseException | None = None) -> None:
        if exc is not None:
            self.record.status = status_of(exc)
        self.record.total_s = time.perf_counter() - self.accepted
        metrics_record(self.record)


def image_timing(job: ImageJob, request_id: str | None = None) -> Timing:
    """The timing of `job`'s request, accepted when its pipeline was chosen."""
    record = GenerationRecord(model=job.model, kind="image", params=job.params, edits=len(job.edits),
                              request_id=request_id)
    return Timing(record, accepted_at())


async def image_pipeline(state: AppState, requested: str | None, *, edits: bool = False, masked: bool = False
                         ) -> tuple[str, ServedPipeline]:
    """The pipeline of an image request as served; a 400 for a video pipeline, for edits on one
    that cannot edit, and for anything but a masked edit on a dedicated inpainting model. Marks the
    request accepted (its generation time starts)."""
    _ACCEPTED.set(time.perf_counter())
    model = await resolve_model(state.engine, requested, state.settings.default_model)
    pipeline = await state.engine.served_pipeline(model)
    capabilities = pipeline.capabilities
    if capabilities.is_video:
        raise InvalidRequestError(f"{model} makes videos: ask /v1/videos for them", "model")
    if edits and not capabilities.edits:
        raise InvalidRequestError(f"{model} is a {pipeline.limits.family} pipeline served without image edits "
                                  "(img2img and inpainting): choose a pipeline that has them", "model")
    if capabilities.inpaint_model and not (edits and masked):
        raise InvalidRequestError(f"{model} is an inpainting model: send an image and a mask to /v1/images/edits",
                                  "mask" if edits else "model")
    return model, pipeline


def blocking_denoiser(model: str, what: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"{model} was exported with the blocking denoiser, which cannot stream {what}; "
                               "choose a pipeline exported with `dgate export --denoiser async`", param)


def check_streaming(model: str, pipeline: ServedPipeline, body: ImageGenerationRequest) -> None:
    if body.partial_images and not body.stream:
        raise InvalidRequestError("partial_images applies to streamed requests: add stream=true", "partial_images")
    if body.stream and body.response_format == "url":
        raise InvalidRequestError("streamed images are b64_json: response_format 'url' cannot be streamed",
                                  "response_format")
    if body.partial_images and not pipeline.streams:
        raise blocking_denoiser(model, "partial images", "partial_images")


async def gather_or_cancel(calls: list[Awaitable[T]]) -> list[T]:
    """All results in order; the first failure cancels the calls still running."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


@dataclass(frozen=True)
class ImageJob:
    """The engine calls of one request: one for a generation, one per input image for an edit (each makes
    `params.num_images` images from the same mask and parameters), run at once."""

    model: str
    params: GenerationParams
    edits: tuple[EditImages, ...] = ()
    partial_images: int = 0

    async def run(self, engine: ImageEngine, *, on_step: StepCallback | None = None,
                  on_partial: PartialCallback | None = None, timing: Timing | None = None) -> np.ndarray:
        """uint8 [num_images x max(1, len(edits)), H, W, 3], the edits' images in input order. `timing`
        records the time queued until now and the time in Triton."""
        if timing is None:
            return await self._run(engine, on_step, on_partial)
        encode_before, sent = timing.record.encode_s or 0.0, timing.to_triton()
        images = await self._run(engine, on_step, on_partial)
        timing.generated(images, sent, encode_before)
        return images

    async def _run(self, engine: ImageEngine, on_step: StepCallback | None,
                   on_partial: PartialCallback | None) -> np.ndarray:
        # Only what is asked is passed on: an engine without streaming or edits is called as before.
        options: dict[str, Any] = {"on_step": on_step} if on_step else {}
        if self.partial_images:
            options |= {"partial_images": self.partial_images, "on_partial": on_partial}
        if not self.edits:
            return await engine.generate(self.model, self.params, **options)
        return np.concatenate(await gather_or_cancel(
            [engine.generate(self.model, self.params, edit=edit, **options) for edit in self.edits]))


async def encode_b64(images: np.ndarray, output_format: str, compression: int | None) -> list[str]:
    # Encoding n large images is CPU work: keep it off the event loop.
    return await asyncio.to_thread(lambda: to_base64(encode_batch(images, output_format, compression)))


async def images_response(state: AppState, request: Request, body: ImageGenerationRequest, params: GenerationParams,
                          images: np.ndarray, timing: Timing | None = None) -> ImagesResponse:
    output_format = body.output_format or "png"
    started = time.perf_counter()
    blobs = await asyncio.to_thread(encode_batch, images, output_format, body.output_compression)
    if body.response_format == "url":
        if timing is not None:
            timing.add_encode(started)
        base = (state.settings.public_base_url or str(request.base_url)).rstrip("/")
        data = [ImageData(url=f"{base}/v1/files/{await state.store.aput(blob, output_format)}") for blob in blobs]
    else:
        data = [ImageData(b64_json=text) for text in await asyncio.to_thread(to_base64, blobs)]
        if timing is not None:
            timing.add_encode(started)
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        output_format=output_format,
        quality=body.quality_tier,
        size=f"{params.width}x{params.height}",
        safety_identifier=body.safety_identifier or body.user,
        seed=params.seed,
    )


class _AdmittedStream(EventStreamResponse):
    """Releases its admission slot however the response ends (finished, failed, client gone, never started),
    then records the request (its status set by the work: ok or the error event's code; else cancelled)."""

    def __init__(self, events: AsyncGenerator[bytes, None], slot: Slot, timing: Timing,
                 record: Callable[[GenerationRecord], None]) -> None:
        super().__init__(events)
        self._slot, self._timing, self._record = slot, timing, record
        timing.record.status = "cancelled"  # until the work says how it ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()
            self._timing.finish(self._record)  # after the last event


def stream_images(state: AppState, request: Request, body: ImageGenerationRequest, job: ImageJob,
                  kind: EventKind, slot: Slot, timing: Timing) -> EventStreamResponse:
    """`<kind>.partial_image` events as the pipeline previews (one per image of the request for each
    index), then one `<kind>.completed` event per final image; a failure is an `error` event."""
    output_format, compression = body.output_format or "png", body.output_compression
    common: dict[str, Any] = {"size": f"{job.params.width}x{job.params.height}",
                              "quality": body.quality_tier or "auto", "output_format": output_format}

    async def work(emit: Callable[[bytes], None]) -> list[bytes]:
        async def on_partial(index: int, images: np.ndarray) -> None:
            created, started = int(time.time()), time.perf_counter()
            texts = await encode_b64(images, output_format, compression)
            timing.add_encode(started)
            for text in texts:
                emit(sse_event(ImagePartialImageEvent(type=f"{kind}.partial_image", b64_json=text, created_at=created,
                                                      partial_image_index=index, **common).model_dump()))

        images = await job.run(state.engine, on_partial=on_partial, timing=timing)
        created, started = int(time.time()), time.perf_counter()
        texts = await encode_b64(images, output_format, compression)
        timing.add_encode(started)
        timing.record.status = "ok"
        return [sse_event(ImageCompletedEvent(type=f"{kind}.completed", b64_json=text, created_at=created,
                                              safety_identifier=body.safety_identifier or body.user,
                                              seed=job.params.seed, **common).model_dump(exclude_none=True))
                for text in texts]

    def on_error(exc: Exception) -> OpenAIError:
        error = from_exception(exc, retry_after_s=state.settings.retry_after_s, request_id=request_id)
        timing.record.status = error.code or type(exc).__name__
        return error

    request_id = getattr(request.state, "request_id", None)
    return _AdmittedStream(event_stream(work, on_error=on_error), slot, timing, state.metrics.record)


async def answer(state: AppState, request: Request, body: ImageGenerationRequest, job: ImageJob,
                 kind: EventKind) -> ImagesResponse | Response:
    """The images as one `ImagesResponse`, or as events when the request streams; a 429 at once when the
    pipeline has its bound of requests in flight (frontend/admission.py). Recorded in the metrics however
    it ends (a stream when its last event is sent)."""
    timing = image_timing(job, getattr(request.state, "request_id", None))
    try:
        slot = state.admission.admit(job.model, await state.engine.served_pipeline(job.model))
        try:  # after admission: a busy pipeline's 429 costs no quota
            await charge_megapixels(megapixels(job.params.num_images * max(1, len(job.edits)), job.params.width,
                                               job.params.height))
        except BaseException:
            slot.release()
            raise
        if body.stream:
            return stream_images(state, request, body, job, kind, slot, timing)
        with slot:
            images = await unless_disconnected(request, job.run(state.engine, timing=timing))
            response = await images_response(state, request, body, job.params, images, timing)
    except BaseException as exc:
        timing.finish(state.metrics.record, exc)
        raise
    timing.finish(state.metrics.record)
    return response
