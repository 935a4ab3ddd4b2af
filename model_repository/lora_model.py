"""`dgate_lora`: the control path of the LoRA API. Checks a pipeline's adapters against its weights.

One model per repository. The frontend asks it before it activates or lists an adapter (`set_lora`,
`/v1/loras/load`) and each denoiser before its loop: every adapter is read with the same code the
components use and its every layer is matched, shape and all, against the LoraMap export wrote
beside each component. It answers a report or an INVALID_ARG error; it holds no weights, so a bad
file can never reach a served model through it.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.errors import InvalidRequestError
from dgate.core.lora.adapter_file import AdapterFile, lora_components, read_adapter
from dgate.core.lora.deltas import LRUCache
from dgate.core.lora.low_rank import layer_factors
from dgate.core.lora.request import adapters_dir, decode_adapters
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap
from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec
from dgate.core.tensors import LORA_CHECK_MODEL, LORA_INPUT
from dgate.model_repository.triton_io import ModelArgs, error_response, input_scalar


class PipelineWeights:
    """A served pipeline's spec and the LoraMap of each component that takes adapters."""

    def __init__(self, repository: Path, pipeline: str) -> None:
        spec_file = repository / f"{pipeline}_denoiser" / "1" / PIPELINE_FILE
        if not spec_file.is_file():
            raise InvalidRequestError(f"no pipeline {pipeline!r} in this repository", "model")
        self.spec = PipelineSpec.load(spec_file)
        if self.spec.quantization is not None:  # adapters are checked against the fused ones instead
            self.maps = {}
            return
        self.maps = {component: LoraMap.load(path) for component in lora_components(self.spec)
                     if (path := repository / f"{pipeline}_{component}" / "1" / LORA_MAP_FILE).is_file()}
        if not self.maps:
            raise InvalidRequestError(f"{pipeline} is served without LoRA support (exported with --no-lora)",
                                      "model")

    def check(self, file: AdapterFile) -> dict[str, Any]:
        layers = read_adapter(file.path, self.spec.pipeline_class, lora_components(self.spec),
                              self.spec.denoiser_component)
        components = {}
        for component, found in layers.items():
            # Raises on a layer or shape mismatch, with the serving path's own checks; the factors only,
            # never the dense deltas (400 MB for an SD 1.5 UNet adapter) a check does not need.
            layer_factors(component, found, self.maps[component])
            components[component] = {"layers": len(found),
                                      "ranks": sorted({layer.down.shape[0] for layer in found.values()})}
        return {"components": components}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.repository = ModelArgs(args).version_dir.parent.parent
        self.pipelines: dict[tuple[str, int], PipelineWeights] = {}
        self.reports: LRUCache[tuple[str, AdapterFile], dict[str, Any]] = LRUCache(64)

    def _pipeline(self, name: str) -> PipelineWeights:
        spec_file = self.repository / f"{name}_denoiser" / "1" / PIPELINE_FILE
        key = (name, spec_file.stat().st_mtime_ns if spec_file.exists() else 0)  # a re-export is a new key
        if key not in self.pipelines:
            self.pipelines[key] = PipelineWeights(self.repository, name)
        return self.pipelines[key]

    def _report(self, request: Any) -> str:
        name = str(input_scalar(request, "pipeline"))
        pipeline = self._pipeline(name)
        directory = adapters_dir()
        refs = decode_adapters(str(input_scalar(request, LORA_INPUT)))
        if pipeline.spec.quantization is not None:
            pipeline.spec.quantization.check_adapters(name, refs, directory)
            return json.dumps({"pipeline": name, "adapters": [{"path": ref.path, "fused": True} for ref in refs]})
        adapters = []
        for ref in refs:
            file = AdapterFile.find(directory, ref.path)
            report = self.reports.get_or_load((name, file), partial(pipeline.check, file))
            adapters.append({"path": ref.path, "bytes": file.size} | report)
        return json.dumps({"pipeline": name, "adapters": adapters})

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                report = np.array([self._report(request).encode()], dtype=np.object_)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("report", report)]))
            except Exception as error:
                responses.append(error_response(error, request, LORA_CHECK_MODEL))
        return responses
