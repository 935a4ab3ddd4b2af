"""What every image route (generations, edits, variations, the WebSocket) shares: choosing the
pipeline, running a request's engine calls, and answering with an `ImagesResponse` or a stream of
image events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
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
from dgate.frontend.errors import from_exception
from dgate.frontend.image_store import encode_batch, to_base64
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


async def image_pipeline(state: AppState, requested: str | None, *, edits: bool = False, masked: bool = False
                         ) -> tuple[str, ServedPipeline]:
    """The pipeline of an image request as served; a 400 for a video pipeline, for edits on one
    that cannot edit, and for anything but a masked edit on a dedicated inpainting model."""
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
                  on_partial: PartialCallback | None = None) -> np.ndarray:
        """uint8 [num_images x max(1, len(edits)), H, W, 3], the edits' images in input order."""
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
                          images: np.ndarray) -> ImagesResponse:
    output_format = body.output_format or "png"
    blobs = await asyncio.to_thread(encode_batch, images, output_format, body.output_compression)
    if body.response_format == "url":
        base = (state.settings.public_base_url or str(request.base_url)).rstrip("/")
        data = [ImageData(url=f"{base}/v1/files/{await state.store.aput(blob, output_format)}") for blob in blobs]
    else:
        data = [ImageData(b64_json=text) for text in await asyncio.to_thread(to_base64, blobs)]
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
    """Releases its admission slot however the response ends (finished, failed, client gone, never started)."""

    def __init__(self, events: AsyncGenerator[bytes, None], slot: Slot) -> None:
        super().__init__(events)
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


def stream_images(state: AppState, request: Request, body: ImageGenerationRequest, job: ImageJob,
                  kind: EventKind, slot: Slot) -> EventStreamResponse:
    """`<kind>.partial_image` events as the pipeline previews (one per image of the request for each
    index), then one `<kind>.completed` event per final image; a failure is an `error` event."""
    output_format, compression = body.output_format or "png", body.output_compression
    common: dict[str, Any] = {"size": f"{job.params.width}x{job.params.height}",
                              "quality": body.quality_tier or "auto", "output_format": output_format}

    async def work(emit: Callable[[bytes], None]) -> list[bytes]:
        async def on_partial(index: int, images: np.ndarray) -> None:
            created = int(time.time())
            for text in await encode_b64(images, output_format, compression):
                emit(sse_event(ImagePartialImageEvent(type=f"{kind}.partial_image", b64_json=text, created_at=created,
                                                      partial_image_index=index, **common).model_dump()))

        images = await job.run(state.engine, on_partial=on_partial)
        state.metrics.images.labels(model=job.model).inc(len(images))
        created = int(time.time())
        return [sse_event(ImageCompletedEvent(type=f"{kind}.completed", b64_json=text, created_at=created,
                                              safety_identifier=body.safety_identifier or body.user,
                                              seed=job.params.seed, **common).model_dump(exclude_none=True))
                for text in await encode_b64(images, output_format, compression)]

    request_id = getattr(request.state, "request_id", None)
    return _AdmittedStream(event_stream(work, on_error=lambda exc: from_exception(
        exc, retry_after_s=state.settings.retry_after_s, request_id=request_id)), slot)


async def answer(state: AppState, request: Request, body: ImageGenerationRequest, job: ImageJob,
                 kind: EventKind) -> ImagesResponse | Response:
    """The images as one `ImagesResponse`, or as events when the request streams; a 429 at once when the
    pipeline has its bound of requests in flight (frontend/admission.py)."""
    slot = state.admission.admit(job.model, await state.engine.served_pipeline(job.model))
    try:  # after admission: a busy pipeline's 429 costs no quota
        await charge_megapixels(megapixels(job.params.num_images * max(1, len(job.edits)), job.params.width,
                                           job.params.height))
    except BaseException:
        slot.release()
        raise
    if body.stream:
        return stream_images(state, request, body, job, kind, slot)
    with slot:
        images = await unless_disconnected(request, job.run(state.engine))
        state.metrics.images.labels(model=job.model).inc(len(images))
        return await images_response(state, request, body, job.params, images)
