"""A pipeline component (text encoder, UNet/transformer, VAE) as a Triton Python model.

The CPU build of Triton has only the Python backend, so the ONNX Runtime session lives here. Triton's
dynamic batcher hands us several requests at once: same-shaped ones are concatenated into one
session run, which is how the denoising steps of concurrent requests share a UNet batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.onnx_session import create_session
from dgate.model_repository.triton_io import ModelArgs, error_response, input_array

logger = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        engine = model.parameter("engine", "onnxruntime")
        if engine != "onnxruntime":
            raise pb_utils.TritonModelException(
                f"{model.name}: the Python backend runs ONNX Runtime; serve '{engine}' with --triton-backend native"
            )
        self.session = create_session(model.version_dir / "model.onnx", int(model.parameter("onnx_threads", "0")))
        self.input_names = [tensor["name"] for tensor in model.config["input"]]
        self.output_names = [tensor["name"] for tensor in model.config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        arrays = []
        for index, request in enumerate(requests):
            inputs = {name: input_array(request, name) for name in self.input_names}
            arrays.append(inputs)
            groups[tuple((name, a.shape[1:]) for name, a in inputs.items())].append(index)
        for members in groups.values():
            try:
                batch = {name: np.concatenate([arrays[i][name] for i in members]) for name in self.input_names}
                outputs = self.session.run(self.output_names, batch)
            except Exception as error:  # one bad batch must not take the model down
                logger.exception("component run failed")
                for i in members:
                    responses[i] = error_response(error)
                continue
            offset = 0
            for i in members:
                size = len(arrays[i][self.input_names[0]])
                tensors = [pb_utils.Tensor(name, out[offset:offset + size])
                           for name, out in zip(self.output_names, outputs, strict=True)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += size
        return responses
