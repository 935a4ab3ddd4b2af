"""`TritonEngine`: the `Engine` over Triton's gRPC asyncio client.

One OpenAI request becomes ONE Triton request to the pipeline's ensemble carrying all `n` images
(`num_images`), so the denoiser can batch them on the accelerator instead of the frontend fanning out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException

from dgate.core.cancellation import DEADLINE_PARAMETER
from dgate.core.errors import InvalidRequestError
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.core.tensors import (
    CANCEL_MODEL,
    CANCEL_REQUEST_ID,
    CONDITIONING_IMAGE,
    EDIT_IMAGE,
    EDIT_MASK,
    ENSEMBLE_OUTPUT,
    LORA_CHECK_MODEL,
    LORA_INPUT,
    PARTIAL_IMAGES,
    PARTIAL_INDEX_OUTPUT,
    PARTIAL_OUTPUT,
    PIPELINE_MARKER_PARAMETER,
    PROGRESS_OUTPUT,
    STEPS_OUTPUT,
    STREAM_PROGRESS,
    STRENGTH,
    VIDEO_OUTPUT,
    infer_inputs,
    request_tensors,
)
from dgate.frontend.engine.errors import EngineError, EngineTimeout, ModelNotFound, ServiceUnavailable
from dgate.frontend.engine.protocol import EditImages, PartialCallback, ProgressCallback, StepCallback
from dgate.frontend.engine.triton_errors import map_triton_error
from dgate.frontend.request_id import REQUEST_ID

logger = logging.getLogger(__name__)


def check_images(images: np.ndarray, params: GenerationParams) -> np.ndarray:
    """Refuse a batch that does not match the request rather than return wrong images."""
    expected = (params.num_images, params.height, params.width, 3)
    if images.dtype != np.uint8 or images.shape != expected:
        raise EngineError(
            f"pipeline returned images {images.dtype}{list(images.shape)}, expected uint8{list(expected)}"
        )
    return images


def triton_request_id(kind: str) -> str:
    """Triton's id for one request: the HTTP request's id (x-request-id) first, so that Triton's log and
    the frontend's join on it, and a suffix of its own, as the cancellation board needs it unique."""
    frontend_id = REQUEST_ID.get()
    return f"{frontend_id}:{kind}-{secrets.token_hex(4)}" if frontend_id else f"{kind}-{secrets.token_hex(8)}"


# tritonclient's own defaults (2 GiB messages) plus a short reconnect backoff: gRPC's default grows
# to 120 s, so after a long Triton outage the frontend would stay unready long after Triton is back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


async def _end(stream: Any, timeout_s: float = 1.0) -> None:
    """Let a stream whose final response came end as Triton ends it (it closes the call once the request
    is released) rather than cancel it mid-close: cancelled calls left Triton's ensemble unable to
    unload at shutdown, holding the server's exit for its whole --exit-timeout-secs."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            async for _ in stream:
                pass


class TritonEngine:
    """`Engine` over Triton's gRPC asyncio client; served pipelines are cached per model."""

    def __init__(self, url: str, *, request_timeout_s: float, metadata_timeout_s: float = 5.0) -> None:
        self._url = url
        self._request_timeout_s = request_timeout_s
        self._metadata_timeout_s = metadata_timeout_s
        self._client: grpcclient.InferenceServerClient | None = None
        self._pipelines: dict[str, ServedPipeline] = {}

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        # Created lazily: a grpc.aio channel belongs to the event loop it is created in.
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self._url, channel_args=CHANNEL_ARGS)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _config_parameters(self, name: str) -> dict[str, str]:
        try:
            config = await self.client.get_model_config(
                name, as_json=True, client_timeout=self._metadata_timeout_s
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc, name) from exc
        parameters = config.get("config", {}).get("parameters", {})
        return {key: value.get("string_value", "") for key, value in parameters.items()}

    async def served_pipeline(self, name: str) -> ServedPipeline:
        if name in self._pipelines:
            return self._pipelines[name]
        parameters = await self._config_parameters(name)
        if parameters.get(PIPELINE_MARKER_PARAMETER) != "true":
            raise ModelNotFound(name)  # a component model (text encoder, unet...) is not servable alone
        try:
            pipeline = ServedPipeline.from_parameters(parameters)
        except (KeyError, ValueError) as exc:
            raise EngineError(f"pipeline '{name}' has an invalid config: {exc}") from exc
        self._pipelines[name] = pipeline
        return pipeline

    async def list_pipelines(self) -> list[str]:
        try:
            index = await self.client.get_model_repository_index(
                as_json=True, client_timeout=self._metadata_timeout_s
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc) from exc
        ready = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
        found = await asyncio.gather(*(self._is_pipeline(name) for name in ready))
        return [name for name, is_pipeline in zip(ready, found, strict=True) if is_pipeline]

    async def _is_pipeline(self, name: str) -> bool:
        try:
            await self.served_pipeline(name)
        except ModelNotFound:
            return False
        except ServiceUnavailable:
            raise
        except EngineError as exc:  # one broken pipeline config must not hide the others
            logger.warning("skipping model %s: %s", name, exc.message)
            return False
        return True

    async def generate(self, name: str, params: GenerationParams, *, edit: EditImages | None = None,
                       partial_images: int = 0, on_step: StepCallback | None = None,
                       on_partial: PartialCallback | None = None) -> np.ndarray:
        """A streaming pipeline (the async denoiser) is asked over Triton's gRPC stream, where its
        progress and partial images arrive before the images; a blocking one by one infer call."""
        pipeline = await self.served_pipeline(name)
        if (partial_images or on_step is not None) and not pipeline.streams:
            raise InvalidRequestError(f"{name} was exported with the blocking denoiser (dgate export --denoiser "
                                      "blocking): it sends no progress or partial images", "stream")
        if edit is not None and not pipeline.capabilities.edits:
            raise InvalidRequestError(f"{name} ({pipeline.limits.family}) cannot edit images", "model")
        values: dict[str, object] = dict(vars(params))
        if edit is None:
            values.pop(STRENGTH.name)  # an edit's only
        else:
            values[EDIT_IMAGE.name] = np.ascontiguousarray(edit.image, dtype=np.uint8)  # [H, W, 3]: no batch dim
            if edit.mask is not None:
                values[EDIT_MASK.name] = np.ascontiguousarray(edit.mask, dtype=np.uint8)
        if partial_images:
            values[PARTIAL_IMAGES.name] = partial_images
        if on_step is not None:
            values[STREAM_PROGRESS.name] = True
        inputs = infer_inputs(grpcclient, values, tensors=request_tensors("image"))
        request_id = triton_request_id("image")
        if not pipeline.streams:
            return check_images(await self._infer_images(name, inputs, request_id), params)
        outputs = [PROGRESS_OUTPUT, STEPS_OUTPUT, PARTIAL_OUTPUT, PARTIAL_INDEX_OUTPUT, ENSEMBLE_OUTPUT]

        async def on_response(result: Any) -> bool:
            images = result.as_numpy(ENSEMBLE_OUTPUT.name)
            if images is not None:
                return True
            partial = result.as_numpy(PARTIAL_OUTPUT.name)
            if partial is not None and on_partial is not None:
                await on_partial(int(result.as_numpy(PARTIAL_INDEX_OUTPUT.name)[0]), partial)
            steps = result.as_numpy(STEPS_OUTPUT.name)
            if steps is not None and on_step is not None:
                await on_step(int(steps[0]), int(steps[1]))
            return False

        final = await self._stream(name, inputs, request_id, [t.name for t in outputs], on_response, "images")
        return check_images(final.as_numpy(ENSEMBLE_OUTPUT.name), params)

    def _deadline(self) -> dict[str, int]:
        """The request's deadline for Triton: the denoiser stops at the first step past it, so work ends
        there too when the frontend's own cancellation cannot reach it (the frontend gone, a lost stream)."""
        return {DEADLINE_PARAMETER: int((time.time() + self._request_timeout_s) * 1000)}

    async def _infer_images(self, name: str, inputs: list[Any], request_id: str) -> np.ndarray:
        try:
            result = await self.client.infer(
                name,
                inputs,
                outputs=[grpcclient.InferRequestedOutput(ENSEMBLE_OUTPUT.name)],
                client_timeout=self._request_timeout_s,
                request_id=request_id,
                parameters=self._deadline(),
            )
        except InferenceServerException as exc:
            # The model may have been reloaded with other limits (or removed): re-read them next time.
            self._pipelines.pop(name, None)
            error = map_triton_error(exc, name, request_id)
            if isinstance(error, EngineTimeout):  # the client's deadline: the request may still run there
                await asyncio.shield(self._cancel(request_id))
            raise error from exc
        except BaseException:  # the HTTP client went away (cancelled), or anything else: stop the denoiser
            await asyncio.shield(self._cancel(request_id))
            raise
        images = result.as_numpy(ENSEMBLE_OUTPUT.name)
        if images is None:
            raise EngineError(f"pipeline '{name}' returned no '{ENSEMBLE_OUTPUT.name}' output")
        return images

    async def _stream(self, name: str, inputs: list[Any], request_id: str, outputs: list[str],
                      on_response: Callable[[Any], Awaitable[bool]], what: str) -> Any:
        """One request over Triton's gRPC stream (decoupled denoisers: Triton's HTTP and unary gRPC
        endpoints refuse them); `on_response` sees each response and says whether it is the final one.
        Cancelling the awaiting task (client gone, job deleted, shutdown) cancels the request in Triton."""

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": name, "inputs": inputs, "request_id": request_id, "parameters": self._deadline(),
                   "outputs": [grpcclient.InferRequestedOutput(output) for output in outputs]}

        stream = self.client.stream_infer(requests())
        completed = False
        try:
            async with asyncio.timeout(self._request_timeout_s):
                async for result, error in stream:
                    if error is not None:
                        raise error
                    if await on_response(result):
                        completed = True
                        return result
        except InferenceServerException as exc:  # Triton ended the request with an error: nothing runs there
            self._pipelines.pop(name, None)
            raise map_triton_error(exc, name, request_id) from exc
        except grpc.RpcError as exc:  # the stream's own failure (Triton gone: UNAVAILABLE), not wrapped by tritonclient
            self._pipelines.pop(name, None)
            raise map_triton_error(get_error_grpc(exc), name, request_id) from exc
        except TimeoutError as exc:
            await asyncio.shield(self._cancel(request_id))
            raise EngineTimeout(f"Triton did not finish the {what} in {self._request_timeout_s:g} s") from exc
        except BaseException:  # the client went away (cancelled), a failing callback (an encoder), anything:
            await asyncio.shield(self._cancel(request_id))  # the denoiser stops within a step
            raise
        finally:
            if completed:
                await _end(stream)
            stream.cancel()
        raise EngineError(f"pipeline '{name}' ended the stream without its {what}")

    async def generate_video(self, name: str, params: GenerationParams, image: np.ndarray | None,
                             on_progress: ProgressCallback | None = None) -> np.ndarray:
        """Over Triton's gRPC stream: the video denoiser is decoupled and answers each step with
        `progress`, then with `video`."""
        capabilities = (await self.served_pipeline(name)).capabilities
        values: dict[str, object] = dict(vars(params))
        if capabilities.takes_image:
            if image is None:
                raise InvalidRequestError(f"{name} makes a video from an image: send input_reference",
                                          "input_reference")
            values[CONDITIONING_IMAGE.name] = np.ascontiguousarray(image, dtype=np.uint8)
        inputs = infer_inputs(grpcclient, values, tensors=request_tensors(capabilities.task, capabilities.takes_image))

        async def on_response(result: Any) -> bool:
            if result.as_numpy(VIDEO_OUTPUT.name) is not None:
                return True
            if on_progress is not None:
                await on_progress(float(result.as_numpy(PROGRESS_OUTPUT.name)[0]))
            return False

        final = await self._stream(name, inputs, triton_request_id("video"),
                                   [PROGRESS_OUTPUT.name, VIDEO_OUTPUT.name], on_response, "video")
        video = final.as_numpy(VIDEO_OUTPUT.name)
        expected = (1, params.num_frames, params.height, params.width, 3)
        if video.dtype != np.uint8 or video.shape != expected:
            raise EngineError(f"pipeline returned video {video.dtype}{list(video.shape)}, "
                              f"expected uint8{list(expected)}")
        return video[0]

    async def _cancel(self, request_id: str) -> None:
        """Stop a request running in a denoiser: Triton's own cancellation stops an ensemble only
        between steps, so the repository's dgate_cancel posts it where the denoiser looks each step."""
        tensor = grpcclient.InferInput(CANCEL_REQUEST_ID, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([request_id.encode()], dtype=np.object_))
        try:
            await self.client.infer(CANCEL_MODEL, [tensor], client_timeout=self._metadata_timeout_s)
        except InferenceServerException as exc:  # an older repository without dgate_cancel: it runs on
            logger.warning("could not cancel %s in Triton: %s", request_id, exc.message())

    async def check_adapters(self, name: str, lora: str) -> dict:
        await self.served_pipeline(name)  # ModelNotFound for a name that is not a pipeline
        inputs = []
        for input_name, value in (("pipeline", name), (LORA_INPUT, lora)):
            tensor = grpcclient.InferInput(input_name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
            inputs.append(tensor)
        try:
            result = await self.client.infer(LORA_CHECK_MODEL, inputs, client_timeout=self._request_timeout_s)
        except InferenceServerException as exc:
            error, message = map_triton_error(exc), exc.message() or ""
            if "is not found" in message or "unknown model" in message:  # no dgate_lora: exported --no-lora
                raise InvalidRequestError(f"{name} is served without LoRA support", "model") from exc
            if isinstance(error, InvalidRequestError):
                param = "model" if "without LoRA support" in error.message else "lora_path"
                raise InvalidRequestError(error.message, param) from exc
            raise error from exc
        return json.loads(result.as_numpy("report")[0])

    async def ready(self) -> bool:
        try:
            if not await self.client.is_server_ready(client_timeout=self._metadata_timeout_s):
                return False
            return bool(await self.list_pipelines())
        except (InferenceServerException, EngineError):
            return False
