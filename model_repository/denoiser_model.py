"""The scheduler loop as a Triton Python model; every step calls the UNet/transformer through BLS.

The UNet/transformer model is dynamically batched, so the steps of concurrent requests (each
served by its own instance of this model) run together in one batch.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from dgate.core.denoise import denoise
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory
from dgate.model_repository.triton_io import ModelArgs, error_response, input_array, input_scalar


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.spec = PipelineSpec.load(model.version_dir / "pipeline.json")
        self.schedulers = SchedulerFactory(json.loads((model.version_dir / "scheduler_config.json").read_text()))
        self.denoiser_model = model.parameter("denoiser_model")
        self.model_inputs = [tensor.name for tensor in self.spec.denoiser_model_inputs]
        # The scheduler math is tiny; the cores belong to the UNet model's instances.
        torch.set_num_threads(1)

    def _predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=self.denoiser_model,
            requested_output_names=["noise_pred"],
            inputs=[pb_utils.Tensor(name, inputs[name]) for name in self.model_inputs],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.denoiser_model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "noise_pred").as_numpy()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                params = DenoiseParams(
                    num_images=int(input_scalar(request, "num_images")),
                    num_inference_steps=int(input_scalar(request, "num_inference_steps")),
                    guidance_scale=float(input_scalar(request, "guidance_scale")),
                    seed=int(input_scalar(request, "seed")),
                    height=int(input_scalar(request, "height")),
                    width=int(input_scalar(request, "width")),
                    scheduler=str(input_scalar(request, "scheduler")),
                )
                self.spec.limits.validate(**vars(params))
                latents = denoise(
                    self.spec, params, self.schedulers,
                    input_array(request, "prompt_embeds"), input_array(request, "prompt_attention_mask"),
                    self._predict, is_cancelled=request.is_cancelled,
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("latents", latents)]))
            except Exception as error:
                responses.append(error_response(error))
        return responses
