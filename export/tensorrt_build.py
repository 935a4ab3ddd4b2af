"""Build refittable TensorRT engines from the exported ONNX files (GPU only).

Engines are built with REFIT so that LoRA can later be applied by refitting, never by rebuilding;
nothing refits them yet (Triton's native tensorrt_plan backend, which serves them, cannot).
Shape profiles come from the PipelineSpec: batch 1..max_batch_size and the pipeline's
size limits. `tensorrt` is imported lazily so the rest of export works on machines without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dgate.core.errors import ExportError
from dgate.core.families import family_of
from dgate.core.pipeline_spec import PipelineSpec

logger = logging.getLogger(__name__)
Shape = tuple[int, ...]


def profile_shapes(spec: PipelineSpec, component: str, max_batch_size: int
                   ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape per input: batch 1 / 2 / max; image size min / default / max; T5 prompt
    length 1 / default / max_sequence_length; video frames 1 / default / max."""
    family, limits = family_of(spec), spec.limits
    levels = (
        (1, limits.min_size, limits.min_size, 1, 1),
        (min(2, max_batch_size), limits.default_height, limits.default_width, limits.default_max_sequence_length,
         limits.default_num_frames),
        (max_batch_size, limits.max_height, limits.max_width, limits.max_sequence_length, limits.max_num_frames),
    )
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for tensor in family.component_io(spec, component)[0]:
        minimum, optimum, maximum = (tensor.concrete_shape(batch, family.axis_sizes(spec, h, w, t5, frames))
                                     for batch, h, w, t5, frames in levels)
        shapes[tensor.name] = (minimum, optimum, maximum)
    return shapes


def build_engine(onnx_path: Path, plan_path: Path, shapes: dict[str, tuple[Shape, Shape, Shape]],
                 precision: str = "fp16", workspace_bytes: int = 8 << 30) -> Path:
    """A TensorRT engine; `precision` int8/fp8 take a Q/DQ ONNX from `dgate calibrate` (unproven here:
    no GPU was available when this was written).

    Quantized graphs are exported in FP32 with explicit Q/DQ, so they are built weakly typed with
    FP16 plus INT8/FP8 allowed: TensorRT honours the Q/DQ placement and runs the rest in FP16.
    (`--strongly-typed` applies to an FP16-typed Q/DQ graph, which this exporter does not write.)
    Quantized engines are not refittable: their adapters are fused before calibration.
    """
    try:
        import tensorrt as trt
    except ImportError as error:  # pragma: no cover - needs the tensorrt wheel and a GPU
        raise ExportError("--engine tensorrt needs the `tensorrt` package and an NVIDIA GPU") from error

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp32", "fp16"):
        config.set_flag(trt.BuilderFlag.REFIT)  # for LoRA by refit once an engine runs in the Python backend
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if precision == "fp8":
        config.set_flag(trt.BuilderFlag.FP8)
    profile = builder.create_optimization_profile()
    for name, (minimum, optimum, maximum) in shapes.items():
        profile.set_shape(name, minimum, optimum, maximum)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.write_bytes(bytes(serialized))
    logger.info("built TensorRT engine %s", plan_path)
    return plan_path
