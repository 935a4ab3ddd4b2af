"""`<pipeline>_lora`: the control path of the LoRA API. Checks adapters against the pipeline's weights.

The frontend asks it before it activates or lists an adapter (`set_lora`, `/v1/loras/load`): each
adapter is read with the same code the components use and its every layer is matched, shape and
all, against each component's LoraMap. It answers a report or an INVALID_ARG error; it holds no
weights, so a bad file can never reach a served model through it.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.lora.adapter_file import AdapterFile, lora_components, read_adapter
from dgate.core.lora.deltas import LRUCache, layer_deltas
from dgate.core.lora.request import adapters_dir, decode_adapters
from dgate.core.lora.weight_map import LoraMap
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import LORA_INPUT
from dgate.model_repository.triton_io import ModelArgs, error_response, input_scalar


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.spec = PipelineSpec.load(model.version_dir / "pipeline.json")
        self.maps = {path.stem: LoraMap.load(path) for path in (model.version_dir / "lora_maps").glob("*.json")}
        self.reports: LRUCache[AdapterFile, dict[str, Any]] = LRUCache(64)

    def _check(self, file: AdapterFile) -> dict[str, Any]:
        layers = read_adapter(file.path, self.spec.pipeline_class, lora_components(self.spec),
                              self.spec.denoiser_component)
        components = {}
        for component, found in layers.items():
            layer_deltas(component, found, self.maps[component])  # raises on a layer or shape mismatch
            ranks = sorted({layer.down.shape[0] for layer in found.values()})
            components[component] = {"layers": len(found), "ranks": ranks}
        return {"components": components}

    def _report(self, request: Any) -> str:
        directory = adapters_dir()
        adapters = []
        for ref in decode_adapters(str(input_scalar(request, LORA_INPUT))):
            file = AdapterFile.find(directory, ref.path)
            report = self.reports.get_or_load(file, partial(self._check, file))
            adapters.append({"path": ref.path, "bytes": file.size} | report)
        return json.dumps({"pipeline": self.spec.name, "adapters": adapters})

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                report = np.array([self._report(request).encode()], dtype=np.object_)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("report", report)]))
            except Exception as error:
                responses.append(error_response(error))
        return responses
