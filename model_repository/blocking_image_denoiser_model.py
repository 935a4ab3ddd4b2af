"""The image denoiser, blocking design (`dgate export --denoiser blocking`): each instance runs one
request at a time and answers it once, so the ensemble serves plain HTTP/gRPC infer calls;
concurrency comes from instances. The default design is `async_image_denoiser_model`.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from dgate.core.program import Arrays, run_blocking
from dgate.core.tensors import ENSEMBLE_OUTPUT
from dgate.model_repository.image_denoiser import ImageDenoiser
from dgate.model_repository.triton_io import error_response


class TritonPythonModel(ImageDenoiser):
    def _run(self, request: Any) -> Any:
        try:
            image_request = self.read(request)
            if image_request.lora:
                self.check_adapters_response(self.adapter_check(image_request.lora).exec())

            def call(component: str, inputs: Arrays) -> Arrays:
                return self.component_outputs(component, self.component_request(component, inputs,
                                                                                image_request.lora).exec())

            images = run_blocking(self.program(request, image_request), call)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENSEMBLE_OUTPUT.name, images)])
        except Exception as error:
            return error_response(error, request, self.args.name)
        finally:
            self.cancellations.clear(request.request_id())

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._run(request) for request in requests]
