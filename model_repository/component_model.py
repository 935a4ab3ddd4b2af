"""A pipeline component (text encoder, UNet/transformer, VAE) as a Triton Python model.

The CPU build of Triton has only the Python backend, so the ONNX Runtime session lives here. Triton's
dynamic batcher hands us several requests at once: same-shaped ones are concatenated into one
session run, which is how the denoising steps of concurrent requests share a UNet batch.

Components that take LoRA (text encoders, the denoiser) get a per-row `lora` input naming the
request's adapters. Rows are grouped by it: a batch never runs a row with another request's
weights. Base rows run on the optimised session; each adapter set runs on the refittable session
after an in-place weight switch (dgate.core.lora.serving).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.lora.serving import ComponentAdapters
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap
from dgate.core.onnx_session import create_session
from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec
from dgate.core.tensors import LORA_INPUT
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
        threads = int(model.parameter("onnx_threads", "0"))
        self.session = create_session(model.version_dir / "model.onnx", threads)
        self.input_names = [t["name"] for t in model.config["input"] if t["name"] != LORA_INPUT]
        self.output_names = [tensor["name"] for tensor in model.config["output"]]
        self.adapters: ComponentAdapters | None = None
        if model.parameter("lora_component", ""):
            self.adapters = ComponentAdapters(
                PipelineSpec.load(model.version_dir / PIPELINE_FILE), model.parameter("lora_component"),
                model.version_dir / "model.onnx", LoraMap.load(model.version_dir / LORA_MAP_FILE), threads)
        self._last_lora = ""

    def _session_for(self, lora: str) -> Any:
        if self.adapters is None or not lora:
            return self.session
        key, adapters = self.adapters.resolve(lora)
        return self.adapters.session_for(key, adapters) if key else self.session

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        arrays = []
        for index, request in enumerate(requests):
            inputs = {name: input_array(request, name) for name in self.input_names}
            arrays.append(inputs)
            lora = ""
            if self.adapters is not None:
                value = input_array(request, LORA_INPUT).reshape(-1)[0]
                lora = value.decode() if isinstance(value, bytes) else str(value)
            groups[(lora, tuple((name, a.shape[1:]) for name, a in inputs.items()))].append(index)
        # The adapter set already in the weights goes first: fewer switches.
        for (lora, _), members in sorted(groups.items(), key=lambda item: item[0][0] != self._last_lora):
            try:
                session = self._session_for(lora)
                self._last_lora = lora
                batch = {name: np.concatenate([arrays[i][name] for i in members]) for name in self.input_names}
                outputs = session.run(self.output_names, batch)
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
