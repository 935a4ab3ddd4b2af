"""TensorRT as a component engine, inside the Python backend: so that LoRA can refit the plan.

Triton's native tensorrt_plan backend cannot refit (`--triton-backend native` serves plans without
LoRA). Here each instance deserializes the plan with its own execution context and CUDA stream,
binds torch buffers per call (`set_input_shape` + `set_tensor_address`, outputs sized from the
shapes TensorRT infers) and runs `execute_async_v3` on that stream.

LoRA: the plan is built refittable for exactly the weights the component's LoRA map can touch
(REFIT_INDIVIDUAL + `mark_weights_refittable`, dgate.export.tensorrt_build), whose base values the
export saved beside it (`refit_weights.safetensors`, in the plan's precision). They live on the GPU,
the same `TorchWeightRefitter` bookkeeping as the torch engine rewrites them (A -> B -> A exact,
base restored bitwise: every weight the old set touched is pushed again, TensorRT issue 3628), and
`trt.Refitter` reads them from device memory between executions, never with work pending.

A plan is tied to the TensorRT version and the GPU (compute capability) it was built with: `PlanInfo`
(engine.json) records both and `load` refuses a mismatch in one line instead of TensorRT's crash.
UNPROVEN on a GPU: no GPU was lent while this was written (see issue 17's note); `dgate gpu-check`
runs it where TensorRT and a GPU are present.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dgate.core.engines import Placement
from dgate.core.engines.torch_engine import arrays_on
from dgate.core.lora.refit import TorchWeightRefitter
from dgate.core.lora.serving import AdapterSets
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap
from dgate.core.pipeline_spec import PipelineSpec

if TYPE_CHECKING:  # typings/tensorrt: the real API's stubs, so mypy checks every call below
    import tensorrt as trt

PLAN_FILE = "model.plan"
PLAN_INFO_FILE = "engine.json"
REFIT_WEIGHTS_FILE = "refit_weights.safetensors"
CUDA_GRAPHS_ENV = "DGATE_TENSORRT_CUDA_GRAPHS"  # "1": replay each input-shape set's captured graph


@dataclass(frozen=True)
class PlanInfo:
    """What a plan was built with and for: a plan only deserializes on the same TensorRT and GPU."""

    tensorrt: str  # trt.__version__
    compute_capability: str  # "9.0"
    gpu: str  # the device name, for the message
    precision: str
    outputs: tuple[str, ...]  # the ONNX graph's outputs, in order: the order the engine returns them
    refittable: tuple[str, ...] = ()  # the weights a refit may set (the LoRA map's initializers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def load(cls, path: Path) -> PlanInfo:
        data = json.loads(path.read_text())
        return cls(**{**data, "outputs": tuple(data["outputs"]), "refittable": tuple(data.get("refittable", ()))})

    def mismatch(self, tensorrt: str, compute_capability: str) -> str | None:
        """Why this plan cannot run here, in one line, or None."""
        if tensorrt != self.tensorrt:
            return (f"the plan was built with TensorRT {self.tensorrt} and this is TensorRT {tensorrt}: "
                    "export it again here (dgate export --engine tensorrt) or install that TensorRT")
        if compute_capability != self.compute_capability:
            return (f"the plan was built for a {self.gpu} (compute capability {self.compute_capability}) and "
                    f"this GPU has compute capability {compute_capability}: export it again on this GPU")
        return None


def current_target(device_id: int = 0) -> tuple[str, str, str]:
    """(TensorRT version, compute capability, device name) of this process and GPU."""
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(device_id)
    return trt.__version__, f"{major}.{minor}", torch.cuda.get_device_name(device_id)


def torch_dtype(trt_dtype: trt.DataType) -> torch.dtype:
    import tensorrt as trt

    dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
              trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.uint8: torch.uint8,
              trt.bool: torch.bool}
    if trt_dtype not in dtypes:
        raise ValueError(f"no torch dtype for the TensorRT I/O type {trt_dtype}")
    return dtypes[trt_dtype]


class PlanRefitter:
    """LoRA on a refittable plan: base weights on the GPU, rewritten in place, pushed by name."""

    def __init__(self, engine: trt.ICudaEngine, weights: dict[str, torch.Tensor], logger: trt.ILogger) -> None:
        import tensorrt as trt

        self.refitter = trt.Refitter(engine, logger)
        self.weights = weights  # the buffers TensorRT reads at refit: they must outlive it
        self.bookkeeping = TorchWeightRefitter(weights)

    def apply(self, key: Any, adapters: list[Any], stream: torch.cuda.Stream) -> None:
        import tensorrt as trt

        written = self.bookkeeping.apply(key, adapters)  # restores what the old set touched too
        if not written:
            return
        for name in sorted(written):
            tensor = self.weights[name]
            weights = trt.Weights(_trt_dtype(tensor.dtype), tensor.data_ptr(), tensor.numel())
            if not self.refitter.set_named_weights(name, weights, trt.TensorLocation.DEVICE):
                raise RuntimeError(f"TensorRT refused refit weights {name!r}: the plan was not built refittable "
                                   "for it (export it again with its LoRA map)")
        # The weights were written on the current stream; the refit runs on ours, after them.
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        if not self.refitter.refit_cuda_engine_async(stream.cuda_stream):
            missing = ", ".join(self.refitter.get_missing_weights())
            raise RuntimeError(f"TensorRT refit failed{'; missing weights: ' + missing if missing else ''}")


def _trt_dtype(dtype: torch.dtype) -> trt.DataType:
    import tensorrt as trt

    return {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}[dtype]


class TensorRTEngine:
    def __init__(self, engine: trt.ICudaEngine, placement: Placement, output_names: tuple[str, ...],
                 logger: trt.ILogger, adapters: AdapterSets | None = None,
                 refitter: PlanRefitter | None = None) -> None:
        import tensorrt as trt

        self.placement = placement
        self.device = torch.device(placement.torch_device)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self.output_names = list(output_names)
        self.dtypes = {name: torch_dtype(engine.get_tensor_dtype(name)) for name in names}
        self.logger, self.adapters, self.refitter = logger, adapters, refitter
        self.graphs = CudaGraphs(os.environ.get(CUDA_GRAPHS_ENV, "0") == "1")

    @classmethod
    def load(cls, model_dir: Path, spec: PipelineSpec | None, component: str, placement: Placement,
             threads: int = 0, lora: bool = False) -> TensorRTEngine:
        if not placement.on_gpu:
            raise ValueError(f"{component}: TensorRT plans run on GPU instances only (export with --device gpu)")
        import tensorrt as trt

        if not (model_dir / PLAN_INFO_FILE).is_file():
            raise ValueError(f"{component}: no {PLAN_INFO_FILE} beside the plan (what TensorRT and GPU built it): "
                             "export it again with this dgate")
        info = PlanInfo.load(model_dir / PLAN_INFO_FILE)
        version, capability, _ = current_target(placement.device_id)
        if (reason := info.mismatch(version, capability)) is not None:
            raise ValueError(f"{component}: {reason}")
        logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(placement.device_id):
            engine = trt.Runtime(logger).deserialize_cuda_engine((model_dir / PLAN_FILE).read_bytes())
            if engine is None:
                raise ValueError(f"{component}: TensorRT could not deserialize {model_dir / PLAN_FILE}")
        if not lora:
            return cls(engine, placement, info.outputs, logger)
        if spec is None:
            raise ValueError(f"{component}: LoRA needs the pipeline's pipeline.json beside the plan")
        from safetensors.torch import load_file

        weights = load_file(model_dir / REFIT_WEIGHTS_FILE, device=placement.torch_device)
        refitter = PlanRefitter(engine, weights, logger)
        adapters = AdapterSets(spec, component, LoraMap.load(model_dir / LORA_MAP_FILE),
                               prepare=arrays_on(torch.device(placement.torch_device)))
        return cls(engine, placement, info.outputs, logger, adapters, refitter)

    def _bound(self, name: str, value: Any) -> torch.Tensor:
        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        return tensor.to(self.device, self.dtypes[name]).contiguous()

    def _bind(self, bound: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Set the context's shapes and addresses for these inputs; the outputs, allocated to fit."""
        for name, tensor in bound.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"input {name} of shape {tuple(tensor.shape)} is outside the plan's profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)  # inferred from the input shapes just set
            output = torch.empty([dims[i] for i in range(len(dims))], dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, output.data_ptr())
            outputs.append(output)
        return outputs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    def run(self, inputs: dict[str, Any], lora: str = "") -> list[Any]:
        if self.adapters is not None and self.refitter is not None:
            key, adapters = self.adapters.resolve(lora) if lora else ((), [])
            if key != self.refitter.bookkeeping.current:
                self.stream.synchronize()  # never refit with work pending on the plan
                self.graphs.clear()  # captured against the weights as they were
                with torch.no_grad():
                    self.refitter.apply(key, adapters, self.stream)
        current = torch.cuda.current_stream(self.device)
        bound = {name: self._bound(name, inputs[name]) for name in self.input_names}
        self.stream.wait_stream(current)  # inputs were made on the caller's stream
        if self.graphs.enabled:
            outputs = self.graphs.replay(self, bound)
        else:
            outputs = self._bind(bound)
            self._execute()
        current.wait_stream(self.stream)
        for tensor in (*bound.values(), *outputs):  # used on our stream: not freed before it is done
            tensor.record_stream(self.stream)
        return [output.float() for output in outputs]


@dataclass
class _Captured:
    inputs: dict[str, torch.Tensor]  # the buffers the graph reads: each call copies its inputs in
    outputs: list[torch.Tensor]  # the buffers it writes: each call copies them out
    graph: torch.cuda.CUDAGraph


class CudaGraphs:
    """CUDA graphs of the plan's execution, one per input-shape set (the shapes a deployment fixes:
    batch sizes, image sizes), at most `limit`, captured on first use. A replay launches the whole
    plan at once, without TensorRT's per-kernel launch overhead. Off unless DGATE_TENSORRT_CUDA_GRAPHS=1;
    dropped when a refit changes the weights. UNPROVEN on a GPU (issue 17's note)."""

    def __init__(self, enabled: bool, limit: int = 16) -> None:
        self.enabled, self.limit = enabled, limit
        self._graphs: dict[tuple, _Captured] = {}

    def clear(self) -> None:
        self._graphs.clear()

    def replay(self, engine: TensorRTEngine, bound: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        key = tuple((name, tuple(tensor.shape)) for name, tensor in bound.items())
        captured = self._graphs.get(key) or self._capture(engine, key, bound)
        with torch.cuda.stream(engine.stream):
            for name, tensor in bound.items():
                captured.inputs[name].copy_(tensor)
            captured.graph.replay()
            return [output.clone() for output in captured.outputs]  # the next replay overwrites them

    def _capture(self, engine: TensorRTEngine, key: tuple, bound: dict[str, torch.Tensor]) -> _Captured:
        if len(self._graphs) >= self.limit:
            self._graphs.pop(next(iter(self._graphs)))  # the oldest shape set
        with torch.cuda.stream(engine.stream):
            inputs = {name: tensor.clone() for name, tensor in bound.items()}
        outputs = engine._bind(inputs)
        engine._execute()  # TensorRT sets itself up for these shapes on a first run, outside the capture
        engine.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=engine.stream):
            engine._execute()
        self._graphs[key] = captured = _Captured(inputs, outputs, graph)
        return captured
