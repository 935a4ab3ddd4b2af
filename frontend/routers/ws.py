"""`/v1/ws/generate`: one image generation with its progress over a WebSocket (seed 002's protocol).

One request per connection:
- the client sends one text message, a JSON object with the fields of an images/generations body,
  validated the same way (`stream` is ignored; `partial_images` 0..3 adds previews);
- the server sends `{"type": "progress", "step": k, "total": T, "progress": k/T}` after each denoising
  step (the last is 1.0); `{"type": "partial_image", "index": i, "image_index": j, "b64_json": ...}` for
  preview i of image j when partial_images > 0; then `{"type": "result", "data": {"images":
  [{"b64_json": ...}], "seed", "size", "model", "output_format", "created"}}` and closes normally (1000);
- an error is `{"type": "error", "error": {message, type, param, code}}` (the body the HTTP route would
  have answered), then a close with 1008 for the client's error (4xx) or 1011 for the server's;
- the request must come within DGATE_WS_FIRST_MESSAGE_TIMEOUT_S (10 s; else the error, code `timeout`,
  and 1008) and be at most DGATE_MAX_BODY_MB (else code `request_too_large`);
- messages after the request are ignored; a client that disconnects cancels the generation;
- with API keys configured, the key comes as `Authorization: Bearer`, as a `Sec-WebSocket-Protocol`
  entry `openai-insecure-api-key.<key>` (offer `dgate` beside it: the server answers that one, so the
  key is not echoed) or as `?api_key=<key>`; without a valid one the first message is the error, code
  `invalid_api_key`, then a close with 1008 (frontend/auth.py, before this route runs).

Progress needs a pipeline exported with the streaming denoiser: any other is an error (param model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from dgate.core.errors import InvalidRequestError
from dgate.frontend.auth import ws_subprotocol
from dgate.frontend.errors import OpenAIError, from_exception
from dgate.frontend.image_service import ImageJob, blocking_denoiser, encode_b64, image_pipeline, image_timing
from dgate.frontend.quotas import charge_megapixels, megapixels
from dgate.frontend.schemas import ImageGenerationRequest
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.state import AppState
from dgate.frontend.uploads import parse_fields

router = APIRouter(tags=["images"])
T = TypeVar("T")
CLIENT_ERROR, SERVER_ERROR = 1008, 1011  # policy violation; internal error


class _Gone(Exception):
    """The client closed the connection."""


class _Cancelled(BaseException):
    """A generation whose client went away, as its record's status (`cancelled`)."""


@router.websocket("/v1/ws/generate")
async def generate_ws(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=ws_subprotocol(websocket.scope))
    try:
        await _generate(websocket, websocket.app.state.dgate)
    except _Gone:
        return
    except Exception as exc:
        error = from_exception(exc)
        with contextlib.suppress(_Gone, RuntimeError):  # the client may be gone meanwhile
            await _send(websocket, {"type": "error", "error": error.body()})
            await websocket.close(CLIENT_ERROR if error.status < 500 else SERVER_ERROR, reason=error.code or "")


async def _send(websocket: WebSocket, data: dict[str, Any]) -> None:
    try:
        await websocket.send_text(json.dumps(data, separators=(",", ":")))
    except (WebSocketDisconnect, OSError, RuntimeError) as exc:  # RuntimeError: sent after a close
        raise _Gone from exc


async def _request(websocket: WebSocket, settings: FrontendSettings) -> ImageGenerationRequest:
    timeout_s = settings.ws_first_message_timeout_s
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout_s)
    except TimeoutError as exc:  # a silent client would hold the connection (and a slot) forever
        raise OpenAIError(408, f"no request message within {timeout_s:g} s (DGATE_WS_FIRST_MESSAGE_TIMEOUT_S)",
                          code="timeout") from exc
    if message["type"] == "websocket.disconnect":
        raise _Gone
    payload = message.get("text") or message.get("bytes") or b""
    limit = int(settings.max_body_mb * 2**20)
    if len(payload) > limit:  # characters or bytes: either way bounded
        raise OpenAIError(413, f"The request message is larger than the {settings.max_body_mb:g} MB allowed "
                          "(DGATE_MAX_BODY_MB)", code="request_too_large")
    try:
        fields = json.loads(payload)
    except ValueError as exc:
        raise OpenAIError(400, f"The request message is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(fields, dict):
        raise OpenAIError(400, "The request message must be a JSON object", code="invalid_json")
    return parse_fields(ImageGenerationRequest, fields)


async def _generate(websocket: WebSocket, state: AppState) -> None:
    body = await _request(websocket, state.settings)
    model, pipeline = await image_pipeline(state, body.model)
    if not pipeline.streams:
        raise blocking_denoiser(model, "progress", "model")
    if body.response_format == "url":
        raise InvalidRequestError("WebSocket results are b64_json: response_format 'url' is not available here",
                                  "response_format")
    params = body.to_params(pipeline.limits, max_prompt_chars=state.settings.max_prompt_chars)
    params = replace(params, lora=await state.loras.request_lora(model, body.lora, body.lora_scale))
    output_format, compression = body.output_format or "png", body.output_compression

    async def on_step(done: int, total: int) -> None:
        await _send(websocket, {"type": "progress", "step": done, "total": total, "progress": done / total})

    async def on_partial(index: int, images: np.ndarray) -> None:
        started = time.perf_counter()
        texts = await encode_b64(images, output_format, compression)
        timing.add_encode(started)
        for image_index, text in enumerate(texts):
            await _send(websocket, {"type": "partial_image", "index": index, "image_index": image_index,
                                    "b64_json": text})

    job = ImageJob(model, params, partial_images=body.partial_images or 0)
    timing = image_timing(job)
    try:
        with state.admission.admit(model, pipeline):  # over the bound: the 429's body, then a close with 1008
            await charge_megapixels(megapixels(params.num_images, params.width, params.height))
            images = await _unless_gone(websocket, job.run(state.engine, on_step=on_step, on_partial=on_partial,
                                                           timing=timing))
        started = time.perf_counter()
        texts = await encode_b64(images, output_format, compression)
        timing.add_encode(started)
        await _send(websocket, {"type": "result", "data": {
            "images": [{"b64_json": text} for text in texts], "seed": params.seed,
            "size": f"{params.width}x{params.height}", "model": model, "output_format": output_format,
            "created": int(time.time())}})
    except BaseException as exc:
        timing.finish(state.metrics.record, _Cancelled() if isinstance(exc, _Gone) else exc)
        raise
    timing.finish(state.metrics.record)
    await websocket.close()


async def _unless_gone(websocket: WebSocket, work: Awaitable[T]) -> T:
    """`work`'s result; _Gone, with `work` cancelled, if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(websocket))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise _Gone
        return task.result()
    finally:
        task.cancel()
        watcher.cancel()


async def _disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # one request per connection: later messages are ignored
