"""ONNX Runtime as a component engine: the exported graph on the CPU (CUDA EP on a GPU instance).

Base rows run on the fully optimised session; rows with adapters run on a refittable session whose
weights are rewritten in place (dgate.core.lora.serving.ComponentAdapters). That refit writes numpy
buffers ONNX Runtime reads on the host, so a GPU instance refuses LoRA: ONNX Runtime has no
supported in-place weight update for CUDA memory (use `--engine torch` or `tensorrt` there).

On a GPU instance a run goes through IO binding (`run_bound`): inputs are bound from the torch
tensors' device memory and outputs are left in ORT-allocated CUDA memory, handed to torch through
DLPack, so no component call crosses the bus. The CPU instance keeps `session.run`: on the CPU the
binding's extra Python work costs more than the copies it saves (see `run_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dgate.core.engines import Placement
from dgate.core.lora.serving import ComponentAdapters
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap
from dgate.core.onnx_session import create_session
from dgate.core.pipeline_spec import PipelineSpec

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.onnx"

# A session input's type ('tensor(float16)'...) -> (torch dtype name, IOBinding element type). The
# element type is a numpy type, which every onnxruntime's bind_input takes; bfloat16 has none, so it
# is the ONNX TensorProto number (16), which bind_input takes in recent releases.
_INPUT_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(float)": ("float32", np.float32),
    "tensor(float16)": ("float16", np.float16),
    "tensor(bfloat16)": ("bfloat16", 16),
    "tensor(double)": ("float64", np.float64),
    "tensor(int64)": ("int64", np.int64),
    "tensor(int32)": ("int32", np.int32),
    "tensor(int8)": ("int8", np.int8),
    "tensor(uint8)": ("uint8", np.uint8),
    "tensor(bool)": ("bool", np.bool_),
}

def as_numpy(value: Any) -> np.ndarray:
    """A host array from a numpy array or a (CPU or CUDA) torch tensor."""
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


def _bound_tensor(value: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`value` (numpy array or torch tensor) as a contiguous tensor of `dtype` on `device`."""
    import torch

    if isinstance(value, np.ndarray):
        # torch.from_numpy refuses negative strides; .copy() keeps a 0-d array 0-d (ascontiguousarray does not).
        tensor = torch.from_numpy(value if value.flags.c_contiguous else value.copy())
    else:
        tensor = value.detach()
    return tensor.to(device=device, dtype=dtype).contiguous()


def _to_torch(value: Any) -> torch.Tensor:
    """An output OrtValue as a torch tensor over the same memory (no copy)."""
    import torch

    if hasattr(value, "__dlpack__"):  # onnxruntime's OrtValue wrapper exposes DLPack in recent releases
        return torch.from_dlpack(value)
    # onnxruntime 1.21+ (the gpu extra's floor): DLPack on the native OrtValue in every build.
    return torch.utils.dlpack.from_dlpack(value._ortvalue.to_dlpack())


def run_bound(session: Any, output_names: list[str], inputs: dict[str, Any],
              device: torch.device) -> list[torch.Tensor]:
    """One run through IO binding on `device` ('cuda:N' for a CUDA EP session, or 'cpu'): the inputs
    bound in place from torch memory on `device` (numpy inputs are moved there first), the outputs
    as torch tensors over the memory ONNX Runtime wrote them to, in the session's output types.

    On the CPU this equals `session.run` but is slower on small models (Python work per input and
    output: tests/test_onnxruntime_binding_unit.py), so only GPU instances use it."""
    import torch

    types = {arg.name: arg.type for arg in session.get_inputs()}
    device_type, device_id = device.type, device.index or 0
    binding = session.io_binding()
    held = []  # the bound tensors: ONNX Runtime reads their memory during the run, so keep them alive
    for name, value in inputs.items():
        if types.get(name) not in _INPUT_TYPES:
            raise ValueError(f"input {name!r}: the session has {types.get(name) or 'no such input'}, "
                             "which IO binding here does not take")
        dtype_name, element_type = _INPUT_TYPES[types[name]]
        tensor = _bound_tensor(value, device, getattr(torch, dtype_name))
        held.append(tensor)
        binding.bind_input(name, device_type, device_id, element_type, list(tensor.shape), tensor.data_ptr())
    for name in output_names:
        # Shapes vary (dynamic batch), so ONNX Runtime allocates each output on the device itself.
        binding.bind_output(name, device_type, device_id)
    if device_type == "cuda":
        # The CUDA EP computes on its own stream, which does not wait for torch's: the inputs (and the
        # conversions above) must be finished before it reads them. This also covers earlier outputs:
        # freed back to ORT's arena as soon as torch drops them, maybe with torch kernels still reading.
        torch.cuda.current_stream(device).synchronize()
    session.run_with_iobinding(binding)
    # run_with_iobinding already waits for the EP's stream (the run option
    # disable_synchronize_execution_providers defaults to "0"); this keeps outputs safe if that changes.
    binding.synchronize_outputs()
    return [_to_torch(value) for value in binding.get_outputs()]


@dataclass
class OnnxRuntimeEngine:
    session: Any  # onnxruntime.InferenceSession
    output_names: list[str]
    placement: Placement
    adapters: ComponentAdapters | None = None

    @classmethod
    def load(cls, model_dir: Path, spec: PipelineSpec | None, component: str, placement: Placement,
             threads: int = 0, lora: bool = False) -> OnnxRuntimeEngine:
        path = model_dir / MODEL_FILE
        if lora and placement.on_gpu:
            raise ValueError(f"{component}: LoRA on a GPU instance needs --engine torch or tensorrt; ONNX "
                             "Runtime's CUDA sessions cannot take weights updated in place")
        session = create_session(path, threads, device_id=placement.device_id if placement.on_gpu else None)
        adapters = None
        if lora:
            if spec is None:
                raise ValueError(f"{component}: LoRA needs the pipeline's pipeline.json beside the model")
            adapters = ComponentAdapters(spec, component, path, LoraMap.load(model_dir / LORA_MAP_FILE), threads)
        return cls(session, [output.name for output in session.get_outputs()], placement, adapters)

    def _session_for(self, lora: str) -> Any:
        if self.adapters is None or not lora:
            return self.session
        key, adapters = self.adapters.resolve(lora)
        return self.adapters.session_for(key, adapters) if key else self.session

    def run(self, inputs: dict[str, Any], lora: str = "") -> list[Any]:
        session = self._session_for(lora)
        if self.placement.on_gpu:
            import torch

            # The engine contract: FP32 torch tensors on the instance's GPU (a no-op for FP32 outputs).
            device = torch.device(self.placement.torch_device)
            return [output.float() for output in run_bound(session, self.output_names, inputs, device)]
        return session.run(self.output_names, {name: as_numpy(value) for name, value in inputs.items()})
