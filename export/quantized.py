"""`dgate export --quantized DIR`: serve the denoiser that `dgate calibrate` wrote in DIR.

The other components come from the base model as usual; the pipeline's spec records the
quantization (precision, excluded layers, fused adapters), and the pipeline serves no LoRA by refit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgate.core.errors import ExportError
from dgate.core.quantization import MANIFEST_FILE, Quantization
from dgate.export.onnx_export import EXTERNAL_DATA_FILE, MODEL_FILE, VerifyResult, verify_onnx

logger = logging.getLogger(__name__)
# Max abs error of the quantized denoiser against the FP32 PyTorch one on random inputs, relative to
# the output's magnitude: a sanity bound that catches a broken graph (a wrong scale, a lost layer),
# not a quality claim (`dgate eval` measures quality).
QUANTIZED_TOLERANCE = 0.25


def config_digest(module: Any) -> str:
    """sha256 of a diffusers model's config: the same model architecture and settings, or not."""
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def load_quantization(directory: Path, pipe: Any, denoiser_component: str, engine: str) -> Quantization:
    """The manifest in `directory`, checked against the base pipeline and the engine."""
    manifest = Path(directory) / MANIFEST_FILE
    if not manifest.is_file():
        raise ExportError(f"{directory} holds no {MANIFEST_FILE}: pass the --out folder of `dgate calibrate`")
    quantization = Quantization.load(manifest)
    if quantization.component != denoiser_component:
        raise ExportError(f"{directory} quantizes {quantization.component!r}, but this pipeline's denoiser is "
                          f"{denoiser_component!r}")
    if config_digest(getattr(pipe, denoiser_component)) != quantization.source_config_sha256:
        raise ExportError(f"{directory} was calibrated from a different {denoiser_component} (its config differs "
                          "from this --model's): export it with the model it was calibrated from")
    if quantization.needs_tensorrt and engine != "tensorrt":
        raise ExportError(f"{quantization.precision.upper()} needs TensorRT: modelopt's FP8 Q/DQ are TensorRT "
                          "operators that ONNX Runtime cannot run. Build engines on an NVIDIA GPU with "
                          "--engine tensorrt --device gpu, or calibrate with "
                          "--precision int8 for the CPU")
    return quantization


def quantized_files(directory: Path, component: str, copy_to: Path | None = None) -> dict[str, Path]:
    """The component's files in a calibration folder; copied to `copy_to` first when given (the
    repository writer moves the files it is handed, and the calibration folder must stay whole)."""
    folder = Path(directory) / component
    files = {name: folder / name for name in (MODEL_FILE, EXTERNAL_DATA_FILE) if (folder / name).is_file()}
    if MODEL_FILE not in files:
        raise ExportError(f"{folder / MODEL_FILE} is missing: `dgate calibrate` did not finish")
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        files = {name: Path(shutil.copy2(path, copy_to / name)) for name, path in files.items()}
    return files


def verify_quantized(module: nn.Module, path: Path, component: str, quantization: Quantization,
                     input_sets: list[dict[str, torch.Tensor]]) -> VerifyResult:
    """The quantized graph runs at every checked shape and stays near the FP32 PyTorch model."""
    if quantization.needs_tensorrt:  # ONNX Runtime cannot run it; TensorRT's parser checks it
        return VerifyResult(component, quantization.precision, float("nan"), float("nan"), QUANTIZED_TOLERANCE)
    return verify_onnx(module, path, component, quantization.precision, input_sets, tolerance=QUANTIZED_TOLERANCE)
