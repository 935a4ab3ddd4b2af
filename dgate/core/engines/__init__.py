"""Component engines: the runtimes a component model (text encoder, UNet/transformer, VAE) runs on.

Every engine takes the component's inputs by the names the family gives them and returns its
outputs in the family's order, plus the request rows' `lora` text, so the component model (and the
denoiser behind it) does not care which one serves. An engine is chosen per pipeline at export
(`dgate export --engine`) and recorded in each component's config; the instance's device comes
from Triton (`model_instance_kind`). Engines are imported only when chosen: `torch` costs every
process that imports it ~250 MB, and a repository holds dozens of component processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from dgate.core.pipeline_spec import PipelineSpec

# Python-backend engines (`dgate export --engine`); TensorRT plans can also go to Triton's native
# tensorrt backend (`--triton-backend native`), which cannot refit them: no LoRA there.
PYTHON_BACKEND_ENGINES = ("onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class Placement:
    """Where an instance runs: Triton's instance kind and device id, as `initialize` receives them."""

    kind: str = "CPU"  # "CPU" | "GPU" (KIND_MODEL counts as CPU here: the Python backend runs it there)
    device_id: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.kind == "GPU"

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.device_id}" if self.on_gpu else "cpu"

    @classmethod
    def of_instance(cls, args: dict[str, str]) -> Self:
        return cls(args.get("model_instance_kind", "CPU") or "CPU", int(args.get("model_instance_device_id", 0) or 0))


class ComponentEngine(Protocol):
    placement: Placement

    def run(self, inputs: dict[str, Any], lora: str = "") -> list[Any]:
        """One batch of rows that share `lora` ("" = base weights) -> the outputs, in order.

        Inputs may be numpy arrays or torch tensors; outputs are numpy arrays on the CPU and torch
        tensors on the instance's GPU."""
        ...


def load_engine(engine: str, model_dir: Path, spec: PipelineSpec | None, component: str,
                placement: Placement, threads: int = 0, lora: bool = False) -> ComponentEngine:
    """The engine `engine` over the exported component in `model_dir` (a model's version folder)."""
    if engine == "onnxruntime":
        from dgate.core.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine.load(model_dir, spec, component, placement, threads, lora)
    if engine == "torch":
        from dgate.core.engines.torch_engine import TorchEngine

        if spec is None:
            raise ValueError(f"{component}: the torch engine needs the pipeline's {model_dir / 'pipeline.json'}")
        return TorchEngine.load(model_dir, spec, component, placement, threads, lora)
    if engine == "tensorrt":
        from dgate.core.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine.load(model_dir, spec, component, placement, threads, lora)
    raise ValueError(f"{component}: the Python backend runs {', '.join(PYTHON_BACKEND_ENGINES)}, not {engine!r}")
