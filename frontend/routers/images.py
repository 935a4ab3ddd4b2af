"""`POST /v1/images/generations`: request -> one pipeline call -> encoded images. Translating only."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import APIRouter, Request

from dgate.core.errors import InvalidRequestError
from dgate.frontend.disconnect import unless_disconnected
from dgate.frontend.engine import resolve_model
from dgate.frontend.image_store import encode_batch, to_base64
from dgate.frontend.schemas import ImageData, ImageGenerationRequest, ImagesResponse
from dgate.frontend.state import State

router = APIRouter(tags=["images"])


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerationRequest, request: Request, state: State) -> ImagesResponse:
    model = await resolve_model(state.engine, body.model, state.settings.default_model)
    limits = await state.engine.pipeline_limits(model)
    if limits.is_video:
        raise InvalidRequestError(f"{model} makes videos: ask /v1/videos for them", "model")
    params = body.to_params(limits, max_prompt_chars=state.settings.max_prompt_chars)
    params = replace(params, lora=state.loras.request_lora(model, body.lora, body.lora_scale))
    images = await unless_disconnected(request, state.engine.generate(model, params))
    state.metrics.images.labels(model=model).inc(len(images))

    output_format = body.output_format or "png"
    # Encoding n large images is CPU work: keep it off the event loop.
    blobs = await asyncio.to_thread(encode_batch, images, output_format, body.output_compression)
    if body.response_format == "url":
        base = (state.settings.public_base_url or str(request.base_url)).rstrip("/")
        data = [ImageData(url=f"{base}/v1/files/{state.store.put(blob, output_format)}") for blob in blobs]
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
