"""What both image denoiser designs share (`ImageDenoiser`): everything after the text encoders, through BLS.

Reading a request (parameters, edit image and mask, adapters, what a streaming client asked for)
and building each BLS request of the request's program (`dgate.core.generate.image_program`: VAE
encoder for an edit, the UNet/transformer once per step, the VAE decoder). The Triton models are
`async_image_denoiser_model` (the default) and `blocking_image_denoiser_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.denoise import StepState, cancellable
from dgate.core.edit import EditSource
from dgate.core.errors import InvalidRequestError
from dgate.core.generate import image_program
from dgate.core.lora.request import adapters_dir, decode_adapters
from dgate.core.params import DenoiseParams
from dgate.core.previews import preview_images, preview_steps
from dgate.core.program import Program
from dgate.core.schedulers import check_schedule
from dgate.core.tensors import (
    EDIT_IMAGE,
    EDIT_MASK,
    LORA_CHECK_MODEL,
    LORA_INPUT,
    MAX_PARTIAL_IMAGES,
    PARTIAL_IMAGES,
    PARTIAL_INDEX_OUTPUT,
    PARTIAL_OUTPUT,
    PROGRESS_OUTPUT,
    STEPS_OUTPUT,
    STREAM_PROGRESS,
    STRENGTH,
)
from dgate.model_repository.denoiser_base import DenoiserModel
from dgate.model_repository.triton_io import (
    denoise_params,
    input_scalar,
    optional_array,
)


@dataclass(frozen=True)
class ImageRequest:
    params: DenoiseParams
    edit: EditSource | None
    lora: str  # the adapters the denoiser's rows carry ("" = none)
    partial_images: int  # previews the client wants (streaming)
    progress: bool  # a response after every step (streaming)


class ImageDenoiser(DenoiserModel):
    def read(self, request: Any) -> ImageRequest:
        """The request's values, checked against the pipeline's limits."""
        params = denoise_params(request)
        image, mask = optional_array(request, EDIT_IMAGE.name), optional_array(request, EDIT_MASK.name)
        strength = optional_array(request, STRENGTH.name)
        if strength is not None:
            # The decimal the client sent, not the float32 nearest to it: the steps an edit runs come
            # from steps * strength, and 5 * float32(0.6) = 3.0000001 would run one step more.
            value = np.format_float_positional(np.float32(strength.reshape(-1)[0]), unique=True)
            params = DenoiseParams(**(vars(params) | {"strength": float(value)}))
        self.spec.limits.validate(**vars(params), video=self.spec.capabilities.is_video)
        check_schedule(self.spec, params, self.schedulers, edit=image is not None)
        edit = None
        if image is not None:
            if not self.spec.capabilities.edits:
                raise InvalidRequestError(f"{self.spec.name} ({self.spec.family}) cannot edit images", "image")
            edit = EditSource(image.reshape(image.shape[-3:]), None if mask is None else mask.reshape(mask.shape[-2:]))
        elif mask is not None:
            raise InvalidRequestError("a mask needs the image it masks", "mask")
        partial = optional_array(request, PARTIAL_IMAGES.name)
        partial_images = 0 if partial is None else int(partial.reshape(-1)[0])
        if not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
            raise InvalidRequestError(
                f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}, got {partial_images}", "partial_images")
        progress = optional_array(request, STREAM_PROGRESS.name)
        return ImageRequest(params, edit, self._adapters(str(input_scalar(request, LORA_INPUT))), partial_images,
                            bool(progress is not None and progress.reshape(-1)[0]))

    def _adapters(self, lora: str) -> str:
        if lora and self.spec.quantization is not None:
            self.spec.quantization.check_adapters(self.spec.name, decode_adapters(lora), adapters_dir())
            return ""  # the fused adapters: already in the quantized weights
        if lora and not self.takes_lora:
            raise InvalidRequestError(f"{self.spec.name} is served without LoRA support "
                                      "(exported for a native backend or with --no-lora)", "lora")
        return lora

    def adapter_check(self, lora: str) -> Any:
        """Every adapter against every component's weights, before the loop spends a step: BLS errors
        arrive without their code, so a misfit found by the UNet mid-loop would read as a 500."""
        return pb_utils.InferenceRequest(
            model_name=LORA_CHECK_MODEL, requested_output_names=["report"],
            inputs=[pb_utils.Tensor("pipeline", np.array([self.spec.name.encode()], dtype=np.object_)),
                    pb_utils.Tensor(LORA_INPUT, np.array([lora.encode()], dtype=np.object_))])

    @staticmethod
    def check_adapters_response(response: Any) -> None:
        if response.has_error():  # the check model raises only for adapters that do not fit
            raise InvalidRequestError(response.error().message(), "lora")

    def program(self, request: Any, image_request: ImageRequest, send: Callable[[list[Any]], None] | None = None
                ) -> Program[np.ndarray]:
        """The request's program; after every step its callback sends what a streaming client asked for
        (through `send(output tensors)`) and stops the loop once the request is cancelled."""

        def on_step(state: StepState) -> None:
            if send is not None and image_request.progress:
                send([pb_utils.Tensor(PROGRESS_OUTPUT.name, np.array([state.done / state.total], dtype=np.float32)),
                      pb_utils.Tensor(STEPS_OUTPUT.name, np.array([state.done, state.total], dtype=np.int32))])
            previews = preview_steps(state.total, image_request.partial_images)
            if send is not None and state.done in previews:
                send([pb_utils.Tensor(PARTIAL_OUTPUT.name, preview_images(self.spec, state.latents)),
                      pb_utils.Tensor(PARTIAL_INDEX_OUTPUT.name,
                                      np.array([previews.index(state.done)], dtype=np.int32))])

        after_step = cancellable(self.cancellation_check(request), on_step)  # raises if already cancelled
        return image_program(self.spec, image_request.params, self.schedulers, self.encoded_prompt(request),
                             image_request.edit, after_step, device=self.placement.torch_device)
