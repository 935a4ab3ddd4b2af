"""Export one wrapped component to ONNX and check it against PyTorch in ONNX Runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dgate.core.errors import ExportError
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import TensorSpec
from dgate.export.onnx_fixes import drop_dynamic_squeeze_branches

logger = logging.getLogger(__name__)

OPSET = 17
# Max abs error allowed between ONNX Runtime and PyTorch, relative to the output's magnitude.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}
ONNX_PROTO_LIMIT = 2**31 - 1  # protobuf's 2 GB: bigger models keep their weights beside the graph


@dataclass(frozen=True)
class VerifyResult:
    component: str
    precision: str
    max_abs_error: float
    reference_scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance * max(1.0, self.reference_scale)


def _concrete_dims(tensor: TensorSpec, spec: PipelineSpec, height: int, width: int) -> tuple[int, ...]:
    """Dims for a sample input: spatial -1s become the latent (or, for images, pixel) size."""
    scale = 1 if tensor.name == "image" else spec.vae_scale_factor
    spatial = iter((height // scale, width // scale))
    return tuple(next(spatial) if d == -1 else d for d in tensor.dims)


def sample_inputs(
    pipe: object, spec: PipelineSpec, component: str, batch: int, height: int, width: int, seed: int
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for tensor in spec.component_io(component)[0]:
        shape = (batch, *_concrete_dims(tensor, spec, height, width))
        if tensor.name == "input_ids":
            inputs[tensor.name] = torch.randint(0, pipe.text_encoder.config.vocab_size, shape, generator=generator)
        elif tensor.name.endswith("attention_mask"):
            mask = torch.ones(shape, dtype=torch.int64)
            mask[:, shape[1] // 2 :] = 0  # a padded tail, like a short prompt
            inputs[tensor.name] = mask
        elif tensor.name == "timestep":
            inputs[tensor.name] = torch.randint(0, 1000, shape, generator=generator).float()
        else:
            inputs[tensor.name] = torch.randn(shape, generator=generator)
    return inputs


def _dynamic_axes(tensors: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]]:
    axes = {}
    for tensor in tensors:
        names = iter(("height", "width"))
        axes[tensor.name] = {0: "batch"} | {i + 1: next(names) for i, d in enumerate(tensor.dims) if d == -1}
    return axes


def export_onnx(module: nn.Module, spec: PipelineSpec, component: str, inputs: dict[str, torch.Tensor],
                path: Path) -> Path:
    """Trace `module` to `path` (opset 17, dynamic batch and spatial axes)."""
    input_specs, output_specs = spec.component_io(component)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            module,
            tuple(inputs[t.name] for t in input_specs),
            str(path),
            input_names=[t.name for t in input_specs],
            output_names=[t.name for t in output_specs],
            dynamic_axes=_dynamic_axes(input_specs + output_specs),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter is slower here and fails on quantized models
        )
    model = onnx.load(str(path), load_external_data=False)
    if drop_dynamic_squeeze_branches(model):
        onnx.save_model(model, str(path))
    return path


def convert_to_fp16(fp32_path: Path, fp16_path: Path) -> Path:
    """FP16 weights and math with FP32 inputs/outputs, so Triton configs stay the same."""
    # ONNX Runtime's maintained copy of the converter (onnxconverter-common's mistypes Cast outputs).
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    large = model.ByteSize() > ONNX_PROTO_LIMIT
    onnx.save_model(model, str(fp16_path), save_as_external_data=large)
    return fp16_path


def verify_onnx(module: nn.Module, path: Path, component: str, precision: str,
                input_sets: list[dict[str, torch.Tensor]]) -> VerifyResult:
    """Compare ONNX Runtime with PyTorch on each input set; raise ExportError beyond the tolerance."""
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    error, scale = 0.0, 0.0
    for inputs in input_sets:
        with torch.inference_mode():
            reference = module(*inputs.values()).float().numpy()
        actual = session.run(None, {name: t.numpy() for name, t in inputs.items()})[0]
        if actual.shape != reference.shape:
            raise ExportError(f"{component}: ONNX output shape {actual.shape} != PyTorch {reference.shape}")
        error = max(error, float(np.max(np.abs(actual.astype(np.float32) - reference))))
        scale = max(scale, float(np.max(np.abs(reference))))
    result = VerifyResult(component, precision, error, scale, TOLERANCE[precision])
    logger.info("%s (%s): max abs error %.3g vs PyTorch (output scale %.3g)", component, precision, error, scale)
    if not result.ok:
        raise ExportError(
            f"{component} ({precision}) differs from PyTorch by {error:.3g} "
            f"(allowed {result.tolerance} x max(1, {scale:.3g}))"
        )
    return result
