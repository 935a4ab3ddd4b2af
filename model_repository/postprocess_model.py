"""Decoded VAE output -> uint8 RGB images (N, H, W, 3)."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from dgate.core.images import to_uint8_images
from dgate.model_repository.triton_io import error_response, input_array


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = to_uint8_images(input_array(request, "image"))
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("images", images)]))
            except Exception as error:
                responses.append(error_response(error))
        return responses
