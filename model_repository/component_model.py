"""A pipeline component (text encoder, UNet/transformer, VAE) as a Triton Python model.

The model runs the engine its config names (`engine`: onnxruntime, torch or tensorrt, dgate.core.engines) on
its instance's device (`model_instance_kind`: CPU, or GPU with `--device gpu`). Triton's dynamic
batcher hands us several requests at once: same-shaped ones are concatenated into one engine run,
which is how the denoising steps of concurrent requests share a UNet batch.

Components that take LoRA (text encoders, the denoiser) get a per-row `lora` input naming the
request's adapters. Rows are grouped by it: a batch never runs a row with another request's
weights; the engine switches its weights in place between groups.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.engines import ComponentEngine, Placement, load_engine
from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec
from dgate.core.tensors import LORA_INPUT
from dgate.model_repository.triton_io import ModelArgs, error_response, input_array


def _concatenate(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch  # GPU instances only: CPU components never import torch

    return torch.cat(parts)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.name = model.name
        self.placement = Placement.of_instance(args)
        spec_file = model.version_dir / PIPELINE_FILE
        self.lora = bool(model.parameter("lora_component", ""))
        try:
            self.engine: ComponentEngine = load_engine(
                model.parameter("engine", "onnxruntime"), model.version_dir,
                PipelineSpec.load(spec_file) if spec_file.is_file() else None,
                model.parameter("component", model.parameter("lora_component", "")), self.placement,
                int(model.parameter("onnx_threads", "0")), self.lora)
        except ValueError as error:
            raise pb_utils.TritonModelException(f"{model.name}: {error}") from error
        self.input_names = [t["name"] for t in model.config["input"] if t["name"] != LORA_INPUT]
        self.output_names = [tensor["name"] for tensor in model.config["output"]]
        self._last_lora = ""

    def _input(self, request: Any, name: str) -> Any:
        """A CPU input as numpy; on a GPU instance a GPU input stays there (DLPack, no copy)."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if not self.placement.on_gpu or tensor.is_cpu():
            return tensor.as_numpy()
        import torch

        return torch.from_dlpack(tensor.to_dlpack())

    def _output(self, name: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return pb_utils.Tensor(name, value)
        # The tensor object, not a capsule: from_dlpack then syncs its stream before Triton reads it.
        return pb_utils.Tensor.from_dlpack(name, value.contiguous())

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        arrays = []
        for index, request in enumerate(requests):
            inputs = {name: self._input(request, name) for name in self.input_names}
            arrays.append(inputs)
            lora = ""
            if self.lora:
                value = input_array(request, LORA_INPUT).reshape(-1)[0]
                lora = value.decode() if isinstance(value, bytes) else str(value)
            groups[(lora, tuple((name, tuple(a.shape[1:])) for name, a in inputs.items()))].append(index)
        # The adapter set already in the weights goes first: fewer switches.
        for (lora, _), members in sorted(groups.items(), key=lambda item: item[0][0] != self._last_lora):
            try:
                batch = {name: _concatenate([arrays[i][name] for i in members]) for name in self.input_names}
                outputs = self.engine.run(batch, lora)
                self._last_lora = lora
            except Exception as error:  # one bad batch must not take the model down (each logged)
                for i in members:
                    responses[i] = error_response(error, requests[i], self.name)
                continue
            offset = 0
            for i in members:
                size = len(arrays[i][self.input_names[0]])
                tensors = [self._output(name, out[offset:offset + size])
                           for name, out in zip(self.output_names, outputs, strict=True)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += size
        return responses
