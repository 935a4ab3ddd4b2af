"""`POST /v1/images/edits` and `POST /v1/images/variations`: multipart uploads -> img2img or inpainting
-> the same answers as generations. Translating only: the upload rules live in `edit_uploads.py`.

- The body is multipart (the files); a urlencoded form or a JSON object, which cannot carry a file, is
  read too, so that what it lacks is named (`image`) rather than its content type refused.
- Edits: one image (part `image`) or several (repeated `image[]` parts, at most 16), each edited on
  its own with the same mask and parameters (one engine call per image, run at once); `data` lists
  each image's `n` results in input order, at most DGATE_MAX_EDIT_IMAGES (16) images x `n` in all
  (a 400 naming `n`). `stream=true` answers with `image_edit.*` events.
- Variations: an edit of one image without a mask, at strength 0.8, whose prompt defaults to
  "a variation of the image" (the pipelines need a prompt: a blank one is refused by the tokenizer);
  the `prompt` extension field replaces it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response

from dgate.core.errors import InvalidRequestError
from dgate.frontend.edit_uploads import EDIT_FILES, VARIATION_FILES, edit_inputs, fit_size, image_size
from dgate.frontend.errors import OpenAIError
from dgate.frontend.image_service import ImageJob, answer, check_streaming, image_pipeline
from dgate.frontend.schemas import ImageEditRequest, ImagesResponse, ImageVariationRequest
from dgate.frontend.state import AppState, State
from dgate.frontend.uploads import parse_fields, read_form

router = APIRouter(tags=["images"])


def _form_body(model: type[Any], files: dict[str, int]) -> dict[str, Any]:
    """/docs: the body is read by hand (bounded), as multipart with these files beside the fields (a
    urlencoded form or JSON carries the fields only, and is refused for its missing `image`)."""
    schema = model.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    properties = {name: binary if count == 1 else {"type": "array", "items": binary} for name, count in files.items()}
    form = {**schema, "properties": {**schema["properties"], **properties},
            "required": ["image", *schema.get("required", [])]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


@router.post("/v1/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
             openapi_extra=_form_body(ImageEditRequest, EDIT_FILES))
async def edit_image(request: Request, state: State) -> ImagesResponse | Response:
    """Accepts OpenAI's fields (`input_fidelity` is accepted and ignored: `strength` sets how much of the
    image is kept) and the extensions of generations, plus `strength`."""
    form = await read_form(request, max_upload_bytes=_upload_bytes(state), files=EDIT_FILES, param="image",
                           accept_json=True)
    body = parse_fields(ImageEditRequest, form.fields)
    masks = form.files.get("mask", [])
    return await _edit(state, request, body, form.files.get("image", []), masks[0] if masks else None)


@router.post("/v1/images/variations", response_model=ImagesResponse, response_model_exclude_none=True,
             openapi_extra=_form_body(ImageVariationRequest, VARIATION_FILES))
async def create_variation(request: Request, state: State) -> ImagesResponse | Response:
    form = await read_form(request, max_upload_bytes=_upload_bytes(state), files=VARIATION_FILES, param="image",
                           accept_json=True)
    variation = parse_fields(ImageVariationRequest, form.fields)
    body = parse_fields(ImageEditRequest, variation.model_dump(exclude_none=True))
    return await _edit(state, request, body, form.files.get("image", []), None)


def _upload_bytes(state: AppState) -> int:
    return int(state.settings.max_upload_mb * 2**20)


async def _edit(state: AppState, request: Request, body: ImageEditRequest, images: list[bytes],
                mask: bytes | None) -> ImagesResponse | Response:
    if not images:
        raise OpenAIError(400, "Missing required parameter: 'image' (upload the image to edit as a file)",
                          param="image", code="missing_required_parameter")
    n = body.n or 1
    if len(images) * n > state.settings.max_edit_images:  # each image is edited n times
        raise InvalidRequestError(f"{len(images)} image(s) x n={n} is {len(images) * n} output images; at most "
                                  f"{state.settings.max_edit_images} per request (DGATE_MAX_EDIT_IMAGES)", "n")
    model, pipeline = await image_pipeline(state, body.model, edits=True, masked=mask is not None)
    check_streaming(model, pipeline, body)
    max_pixels = state.settings.max_input_pixels
    first = await asyncio.to_thread(image_size, images[0], max_pixels=max_pixels)
    params = body.to_edit_params(pipeline.limits, max_prompt_chars=state.settings.max_prompt_chars,
                                 default_size=fit_size(first, pipeline.limits), masked=mask is not None)
    params = replace(params, lora=await state.loras.request_lora(model, body.lora, body.lora_scale))
    edits = await asyncio.to_thread(edit_inputs, images, mask, (params.width, params.height), max_pixels=max_pixels)
    return await answer(state, request, body, ImageJob(model, params, edits, body.partial_images or 0),
                        "image_edit")
