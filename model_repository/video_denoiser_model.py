"""A video pipeline's denoiser as a decoupled Triton Python model: progress per step, then the frames.

Everything between the text encoders and the frames happens here through BLS (`dgate.core.video`):
the image encoder and VAE encoder for image-to-video, one UNet call per step (dynamically batched
with other requests' steps), and the VAE decoder chunk by chunk. The model is decoupled so that it
can answer each request with one `progress` response per denoising step and a final one carrying
`video`; the ensemble passes every response on, and clients read them from Triton's gRPC stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.errors import InvalidRequestError
from dgate.core.schedulers import check_schedule
from dgate.core.tensors import CONDITIONING_IMAGE, LORA_INPUT, PROGRESS_OUTPUT, VIDEO_OUTPUT
from dgate.core.video import generate_video
from dgate.model_repository.denoiser_base import DenoiserModel
from dgate.model_repository.triton_io import (
    denoise_params,
    error_response,
    input_array,
    input_scalar,
)


class TritonPythonModel(DenoiserModel):
    def _call(self, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One BLS request to a component model of this pipeline (video pipelines take no adapters)."""
        return self.component_outputs(component, self.component_request(component, inputs, "").exec())

    def _run(self, request: Any) -> None:
        sender = request.get_response_sender()

        def progress(done: int, total: int) -> None:
            value = np.array([min(done, total) / total], dtype=np.float32)
            sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(PROGRESS_OUTPUT.name, value)]))

        try:
            params = denoise_params(request, video=True)
            self.spec.limits.validate(**vars(params), video=self.spec.capabilities.is_video)
            check_schedule(self.spec, params, self.schedulers)
            if str(input_scalar(request, LORA_INPUT)):
                raise InvalidRequestError(f"{self.spec.name} is served without LoRA support (video pipelines "
                                          "take no adapters yet)", "lora")
            image = input_array(request, CONDITIONING_IMAGE.name) if self.spec.capabilities.takes_image else None
            frames = generate_video(self.spec, params, self.schedulers, self.encoded_prompt(request), image,
                                    self._call, is_cancelled=self.cancellation_check(request), on_step=progress)
            final = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(VIDEO_OUTPUT.name, frames),
                pb_utils.Tensor(PROGRESS_OUTPUT.name, np.array([1.0], dtype=np.float32))])
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:
            sender.send(error_response(error, request, self.args.name),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            self.cancellations.clear(request.request_id())

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._run(request)
        return None
