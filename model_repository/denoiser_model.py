"""The scheduler loop as a Triton Python model; every step calls the UNet/transformer through BLS.

Each instance runs one request at a time; the steps of requests on different instances meet in the
UNet model's dynamic batcher. (python_backend runs an `async def execute` concurrently with the next
requests only for decoupled models, and Triton's HTTP and non-streaming gRPC endpoints refuse an
ensemble with a decoupled step, so concurrency here comes from instances.) Each instance is a
process holding torch + diffusers (~250 MB PSS), so the count is a memory/throughput trade-off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.denoise import denoise
from dgate.core.errors import InvalidRequestError
from dgate.core.lora.request import adapters_dir, decode_adapters
from dgate.core.tensors import LORA_CHECK_MODEL, LORA_INPUT
from dgate.model_repository.denoiser_base import DenoiserModel
from dgate.model_repository.triton_io import (
    denoise_params,
    error_response,
    input_scalar,
)


class TritonPythonModel(DenoiserModel):
    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self.denoiser_model = self.args.parameter("denoiser_model")
        self.takes_lora = self.args.parameter("lora", "false") == "true"
        self.model_inputs = [t.name for t in self.family.denoiser_inputs(self.spec)]

    def _predict(self, inputs: dict[str, np.ndarray], lora: bytes) -> np.ndarray:
        tensors = [pb_utils.Tensor(name, inputs[name]) for name in self.model_inputs]
        if self.takes_lora:  # every row carries the request's adapters: the batcher mixes requests
            tensors.append(pb_utils.Tensor(LORA_INPUT, np.array([[lora]] * len(inputs["sample"]), dtype=np.object_)))
        request = pb_utils.InferenceRequest(
            model_name=self.denoiser_model, requested_output_names=["noise_pred"], inputs=tensors)
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.denoiser_model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "noise_pred").as_numpy()

    def _check_adapters(self, lora: str) -> None:
        """Every adapter against every component's weights, before the loop spends a step: BLS errors
        arrive without their code, so a misfit found by the UNet mid-loop would read as a 500."""
        check = pb_utils.InferenceRequest(
            model_name=LORA_CHECK_MODEL, requested_output_names=["report"],
            inputs=[pb_utils.Tensor("pipeline", np.array([self.spec.name.encode()], dtype=np.object_)),
                    pb_utils.Tensor(LORA_INPUT, np.array([lora.encode()], dtype=np.object_))])
        response = check.exec()
        if response.has_error():  # the check model raises only for adapters that do not fit
            raise InvalidRequestError(response.error().message(), "lora")

    def _run(self, request: Any) -> Any:
        try:
            params = denoise_params(request)
            self.spec.limits.validate(**vars(params))
            lora = str(input_scalar(request, LORA_INPUT))
            if lora and self.spec.quantization is not None:
                self.spec.quantization.check_adapters(self.spec.name, decode_adapters(lora), adapters_dir())
                lora = ""  # the fused adapters: already in the quantized weights
            if lora and not self.takes_lora:
                raise InvalidRequestError(f"{self.spec.name} is served without LoRA support "
                                          "(exported for a native backend or with --no-lora)", "lora")
            if lora:
                self._check_adapters(lora)
            latents = denoise(self.spec, params, self.schedulers, self.encoded_prompt(request),
                              lambda inputs: self._predict(inputs, lora.encode()),
                              is_cancelled=self.cancellation_check(request))
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("latents", latents)])
        except Exception as error:
            return error_response(error)
        finally:
            self.cancellations.clear(request.request_id())

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._run(request) for request in requests]
