"""What the image and video denoiser models share: the pipeline they loop for, read once, and the
per-request pieces they both need (the encoded prompt, cancellation, BLS requests to the pipeline's
component models)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import triton_python_backend_utils as pb_utils

from dgate.core.cancellation import CancellationBoard, deadline_of
from dgate.core.device import as_numpy
from dgate.core.engines import Placement
from dgate.core.families import family_of
from dgate.core.families.base import TextOutputs
from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec
from dgate.core.program import Arrays
from dgate.core.schedulers import SchedulerFactory
from dgate.core.tensors import LORA_INPUT, model_name
from dgate.model_repository.triton_io import ModelArgs, input_array


def bls_tensor(name: str, value: Any, dtype: npt.DTypeLike) -> Any:
    """A BLS input: numpy and CPU tensors as host arrays, a GPU tensor by DLPack (the tensor object,
    not a capsule, so that python_backend syncs its stream before reading it)."""
    if isinstance(value, torch.Tensor) and value.is_cuda:
        torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        return pb_utils.Tensor.from_dlpack(name, value.to(torch_dtype).contiguous())
    return pb_utils.Tensor(name, np.ascontiguousarray(as_numpy(value), dtype=dtype))


def answer_tensor(tensor: Any) -> Any:
    """A BLS answer where it arrived: numpy from host memory, a torch tensor from GPU memory."""
    return tensor.as_numpy() if tensor.is_cpu() else torch.from_dlpack(tensor.to_dlpack())


class DenoiserPlacement(Placement):
    def preferred_memory(self) -> dict[str, Any]:
        """InferenceRequest's keyword asking for GPU answers on a GPU instance (the CPU build of the
        Python backend has no PreferredMemory, and a CPU instance wants host answers anyway)."""
        if not self.on_gpu or not hasattr(pb_utils, "PreferredMemory"):
            return {}
        return {"preferred_memory": pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, self.device_id)}


class DenoiserModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.args = ModelArgs(args)
        self.placement = DenoiserPlacement.of_instance(args)
        self.spec = PipelineSpec.load(self.args.version_dir / PIPELINE_FILE)
        self.schedulers = SchedulerFactory(json.loads((self.args.version_dir / "scheduler_config.json").read_text()))
        self.family = family_of(self.spec)
        self.text_inputs = {e.component: [t.name for t in e.outputs] + ["attention_mask"]
                            for e in self.spec.text_encoders}
        self.cancellations = CancellationBoard()
        self.takes_lora = self.args.parameter("lora", "false") == "true"  # the denoiser's rows carry `lora`
        # The scheduler math is tiny; the cores belong to the component models' instances.
        torch.set_num_threads(1)

    def encoded_prompt(self, request: Any) -> TextOutputs:
        """Each text encoder's outputs and token mask for the [negative, prompt] rows."""
        return {component: {name: input_array(request, f"{component}_{name}") for name in names}
                for component, names in self.text_inputs.items()}

    def cancellation_check(self, request: Any) -> Callable[[], bool]:
        """True once the request is cancelled: Triton's own flag does not reach an ensemble step while it
        runs (server#6739), so also the mark dgate_cancel posts for its request id."""
        request_id = request.request_id()
        deadline = deadline_of(request.parameters())  # the client's deadline, when the frontend sent one
        return lambda: (request.is_cancelled() or self.cancellations.is_cancelled(request_id)
                        or (deadline is not None and time.time() > deadline))

    def component_request(self, component: str, inputs: Arrays, lora: str) -> Any:
        """One BLS request to a component model of this pipeline: host arrays as they are, GPU tensors
        by DLPack (no copy), and on a GPU instance the answers asked for in GPU memory."""
        input_specs, output_specs = self.family.component_io(self.spec, component)
        tensors = [bls_tensor(t.name, inputs[t.name], t.numpy_dtype) for t in input_specs]
        if self.takes_lora and component == self.spec.denoiser_component:  # every row: the request's adapters
            rows = len(inputs["sample"])
            tensors.append(pb_utils.Tensor(LORA_INPUT, np.array([[lora.encode()]] * rows, dtype=np.object_)))
        return pb_utils.InferenceRequest(model_name=model_name(self.spec.name, component),
                                         requested_output_names=[t.name for t in output_specs], inputs=tensors,
                                         **self.placement.preferred_memory())

    def component_outputs(self, component: str, response: Any) -> Arrays:
        if response.has_error():
            raise RuntimeError(f"{model_name(self.spec.name, component)}: {response.error().message()}")
        _, output_specs = self.family.component_io(self.spec, component)
        return {t.name: answer_tensor(pb_utils.get_output_tensor_by_name(response, t.name)) for t in output_specs}
