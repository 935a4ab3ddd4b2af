"""ONNX Runtime as a component engine: the exported graph on the CPU (CUDA EP on a GPU instance).

Base rows run on the fully optimised session; rows with adapters run on a refittable session whose
weights are rewritten in place (dgate.core.lora.serving.ComponentAdapters). That refit writes numpy
buffers ONNX Runtime reads on the host, so a GPU instance refuses LoRA: ONNX Runtime has no
supported in-place weight update for CUDA memory (use `--engine torch` there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.engines import Placement
from dgate.core.lora.serving import ComponentAdapters
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap
from dgate.core.onnx_session import create_session
from dgate.core.pipeline_spec import PipelineSpec

MODEL_FILE = "model.onnx"


def as_numpy(value: Any) -> np.ndarray:
    """A host array from a numpy array or a (CPU or CUDA) torch tensor."""
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()


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
            raise ValueError(f"{component}: LoRA on a GPU instance needs --engine torch; ONNX Runtime's CUDA "
                             "sessions cannot take weights updated in place")
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
        return session.run(self.output_names, {name: as_numpy(value) for name, value in inputs.items()})
