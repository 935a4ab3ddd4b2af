"""`POST /v1/images/generations`: the request -> one `ImageJob`, answered by the image service.
Translating only."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request, Response

from dgate.frontend.image_service import ImageJob, answer, check_streaming, image_pipeline
from dgate.frontend.schemas import ImageGenerationRequest, ImagesResponse
from dgate.frontend.state import State

router = APIRouter(tags=["images"])


@router.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(body: ImageGenerationRequest, request: Request, state: State) -> ImagesResponse | Response:
    model, pipeline = await image_pipeline(state, body.model)
    check_streaming(model, pipeline, body)
    params = body.to_params(pipeline.limits, max_prompt_chars=state.settings.max_prompt_chars)
    params = replace(params, lora=await state.loras.request_lora(model, body.lora, body.lora_scale))
    return await answer(state, request, body, ImageJob(model, params, partial_images=body.partial_images or 0),
                        "image_generation")
