"""Export one wrapped component to ONNX and check it against PyTorch in ONNX Runtime.

Models of any size: a graph whose weights pass protobuf's 2 GB limit (the SD 1.5 UNet in FP32 is
3.4 GB; every SDXL/SD3/Flux denoiser) keeps them in one external-data file, `model.onnx.data`,
beside `model.onnx`; export returns every file of the model so the repository writer moves all of them.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dgate.core.errors import ExportError
from dgate.core.families import family_of
from dgate.core.onnx_session import create_session
from dgate.core.pipeline_spec import PipelineSpec
from dgate.export.onnx_fixes import drop_dynamic_squeeze_branches, register_missing_symbolics

logger = logging.getLogger(__name__)

OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter's lowest
# Max abs error allowed between ONNX Runtime and PyTorch, relative to the output's magnitude.
# int8: ONNX Runtime's Q/DQ against modelopt's fake quantization in PyTorch, on random inputs beyond the
# calibrated ranges: modelopt clips at ±127 steps where ONNX's INT8 reaches -128, and a value that
# rounds to the other side of a step differs by one step, which later layers carry on. Measured
# 0.04-0.06 x scale on tiny-sd, 7e-7 on tiny-pixart, 0.043 on the full-size SD 1.5 UNet.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.1}
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
# protobuf's hard limit is 2 GiB for the whole graph; weights beyond this go to the external file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


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


def sample_inputs(spec: PipelineSpec, component: str, batch: int, height: int, width: int, seed: int,
                  t5_length: int | None = None, frames: int | None = None) -> dict[str, torch.Tensor]:
    """Random inputs of the component's tensors at a concrete image size (T5 prompt length, frames)."""
    family = family_of(spec)
    sizes = family.axis_sizes(spec, height, width, t5_length, frames)
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for tensor in family.component_io(spec, component)[0]:
        shape = tensor.concrete_shape(batch, sizes)
        if tensor.name == "input_ids":
            vocab = spec.text_encoder(component).vocab_size
            inputs[tensor.name] = torch.randint(0, vocab, shape, generator=generator)
        elif tensor.name.endswith("attention_mask"):
            mask = torch.ones(shape, dtype=torch.int64)
            mask[:, shape[1] // 2 :] = 0  # a padded tail, like a short prompt
            inputs[tensor.name] = mask
        elif tensor.name == "timestep":
            steps = torch.randint(0, 1000, (batch,), generator=generator)
            inputs[tensor.name] = torch.from_numpy(np.concatenate([family.timestep_input(t, 1) for t in steps]))
        elif tensor.name == "guidance":
            inputs[tensor.name] = torch.full(shape, 3.5)
        else:
            inputs[tensor.name] = torch.randn(shape, generator=generator)
    return inputs


def _weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, directory: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> dict[str, Path]:
    """Save as `directory/model.onnx`, weights in `model.onnx.data` beyond `threshold` bytes.

    Returns the model's files by name (what the repository writer must move).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    external = _weights_bytes(model) > threshold
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_FILE, size_threshold=1024)
    files = {MODEL_FILE: path}
    if external:
        files[EXTERNAL_DATA_FILE] = directory / EXTERNAL_DATA_FILE
    for file in files.values():
        # onnx writes the data file owner-only (0600); a tritonserver running as another user
        # (the NGC container's triton-server user) must read it like model.onnx.
        file.chmod(0o644)
    return files


def export_onnx(module: nn.Module, spec: PipelineSpec, component: str, inputs: dict[str, torch.Tensor],
                directory: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> dict[str, Path]:
    """Trace `module` into `directory` (opset 17, dynamic batch and named axes); returns its files."""
    family = family_of(spec)
    input_specs, output_specs = family.component_io(spec, component)
    raw = directory / "traced"  # the exporter writes one file per weight for >2 GB models
    raw.mkdir(parents=True, exist_ok=True)
    axes = {t.name: t.dynamic_axes() for t in (*input_specs, *output_specs)}
    dynamo = component == spec.denoiser_component and family.dynamo_export
    register_missing_symbolics(OPSET)
    extra: dict[str, Any] = {"external_data": True} if dynamo else {}
    with torch.inference_mode():
        torch.onnx.export(
            module,
            tuple(inputs[t.name] for t in input_specs),
            str(raw / MODEL_FILE),
            input_names=[t.name for t in input_specs],
            output_names=[t.name for t in output_specs],
            dynamic_axes=axes,
            opset_version=DYNAMO_OPSET if dynamo else OPSET,
            do_constant_folding=True,
            # TorchScript by default: faster here, and the dynamo exporter fails on quantized models.
            dynamo=dynamo,
            **extra,
        )
    model = onnx.load(str(raw / MODEL_FILE))  # with its external weights, if any
    drop_dynamic_squeeze_branches(model)
    files = save_onnx(model, directory, threshold)
    del model
    shutil.rmtree(raw)
    return files


def convert_to_fp16(fp32_path: Path, directory: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> dict[str, Path]:
    """FP16 weights and math with FP32 inputs/outputs, so Triton configs stay the same."""
    # ONNX Runtime's maintained copy of the converter (onnxconverter-common's mistypes Cast outputs).
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Given the path, the converter infers shapes with `infer_shapes_path`, which works past 2 GB.
    # Without shape information it cannot tell which inputs must stay FP32 (Resize's scales): the
    # full-size SD 1.5 UNet then failed to load in ONNX Runtime ("Type 'tensor(float16)' of input
    # parameter ... of operator (Resize) is invalid").
    model = convert_float_to_float16(str(fp32_path), keep_io_types=True)
    return save_onnx(model, directory, threshold)


def _as_tuple(output: Any) -> tuple[torch.Tensor, ...]:
    return tuple(output) if isinstance(output, tuple | list) else (output,)


def verify_onnx(module: nn.Module, path: Path, component: str, precision: str,
                input_sets: list[dict[str, torch.Tensor]], tolerance: float | None = None) -> VerifyResult:
    """Compare ONNX Runtime with PyTorch on each input set (every output); raise ExportError beyond
    the tolerance (relative to the output's magnitude; default: the precision's own)."""
    session = create_session(path)
    error, scale = 0.0, 0.0
    for inputs in input_sets:
        with torch.inference_mode():
            references = [r.float().numpy() for r in _as_tuple(module(*inputs.values()))]
        actuals = session.run(None, {name: t.numpy() for name, t in inputs.items()})
        for reference, actual in zip(references, actuals, strict=True):
            if actual.shape != reference.shape:
                raise ExportError(f"{component}: ONNX output shape {actual.shape} != PyTorch {reference.shape}")
            error = max(error, float(np.max(np.abs(actual.astype(np.float32) - reference))))
            scale = max(scale, float(np.max(np.abs(reference))))
    result = VerifyResult(component, precision, error, scale, TOLERANCE[precision] if tolerance is None else tolerance)
    logger.info("%s (%s): max abs error %.3g vs PyTorch (output scale %.3g)", component, precision, error, scale)
    if not result.ok:
        raise ExportError(
            f"{component} ({precision}) differs from PyTorch by {error:.3g} "
            f"(allowed {result.tolerance} x max(1, {scale:.3g}))"
        )
    return result

