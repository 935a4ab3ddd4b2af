"""What this machine offers the check: the device, and which engines can run on it (or why not).

A GPU machine may lack onnxruntime-gpu, TensorRT or tritonserver: each missing piece turns its cases
into "skipped" with the reason, never into failures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from dgate.core.engines import Placement


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception:  # noqa: BLE001 - a broken install counts as missing, with no traceback
        return None


@dataclass(frozen=True)
class Environment:
    device: str  # "cpu" | "cuda"
    torch_version: str
    gpu: str | None
    onnxruntime: str | None  # version, None when not importable
    onnxruntime_providers: tuple[str, ...]
    tensorrt: str | None

    @classmethod
    def detect(cls, device: str) -> Environment:
        providers: tuple[str, ...] = ()
        onnxruntime = _version("onnxruntime")
        if onnxruntime is not None:
            import onnxruntime as ort

            providers = tuple(ort.get_available_providers())
        gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
        return cls(device, torch.__version__, gpu, onnxruntime, providers, _version("tensorrt"))

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def placement(self) -> Placement:
        return Placement("GPU", 0) if self.on_gpu else Placement()

    def engine_missing(self, engine: str) -> str | None:
        """Why `engine` cannot run images here, or None when it can."""
        if engine == "torch":
            return None
        if engine == "onnxruntime":
            if self.onnxruntime is None:
                return "onnxruntime is not installed"
            if self.on_gpu and "CUDAExecutionProvider" not in self.onnxruntime_providers:
                return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            return None
        if engine == "tensorrt":
            if self.tensorrt is None:
                return "tensorrt is not installed (make install GPU=1)"
            return None if self.on_gpu else "TensorRT plans run on a GPU only"
        return f"unknown engine {engine!r}"

    def lora_missing(self, engine: str) -> str | None:
        """Why `engine` cannot switch adapters here, or None when it can."""
        missing = self.engine_missing(engine)
        if missing is None and engine == "onnxruntime" and self.on_gpu:
            return "ONNX Runtime's CUDA sessions take no in-place weight updates (LoRA on a GPU: the torch engine)"
        return missing

    def quantized_missing(self) -> str:
        """INT8/FP8 engines are TensorRT builds: why they are not checked here."""
        if self.tensorrt is None:
            return "needs TensorRT"
        # dgate calibrate needs nvidia-modelopt and a calibration run per model: not part of this check.
        return (f"not in gpu-check yet (TensorRT {self.tensorrt} found): build one with dgate calibrate, then "
                "dgate export --quantized --engine tensorrt --device gpu")

    def describe(self) -> dict[str, Any]:
        engines = {engine: self.engine_missing(engine) or "available"
                   for engine in ("torch", "onnxruntime", "tensorrt")}
        return {"device": self.device, "gpu": self.gpu, "torch": self.torch_version,
                "cuda": torch.version.cuda if self.on_gpu else None, "onnxruntime": self.onnxruntime,
                "onnxruntime_providers": list(self.onnxruntime_providers), "tensorrt": self.tensorrt,
                "engines": engines}
