"""Build TensorRT engines from the exported ONNX files (GPU only), for TensorRT 10 and 11.

Networks are strongly typed: the ONNX graph's types are the engine's precision, so an FP16 engine
comes from the FP16 ONNX the export already writes (per-component precision policy: T5 and SDXL's
VAE stay FP32). TensorRT 11 removed the FP16/INT8/FP8 builder flags and is always strongly typed
(its STRONGLY_TYPED flag is kept and ignored); on TensorRT 10 the flag gives the same engine. FP32
plans are built without TF32. Quantized Q/DQ graphs from `dgate calibrate` (FP32 outside the Q/DQ
pairs) build weakly typed with FP16 allowed on TensorRT 10, as before; on TensorRT 11 they build
strongly typed, the quantized layers in INT8/FP8 and the graph's FP32 elsewhere.

LoRA: with `refittable` names (the LoRA map's initializers) the plan is built with REFIT_INDIVIDUAL
and only those weights marked refittable, which keeps the rest of the plan as fast as a frozen one
(TensorRT issue 2936: a fully refittable SD UNet was 1.7x slower). Shape profiles come from the
PipelineSpec. A timing cache (per TensorRT version and GPU) makes the next build of the same layers
quick. `engine.json` records what the plan is tied to (dgate.core.engines.tensorrt_engine.PlanInfo).
`tensorrt` is imported lazily so the rest of export works on machines without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgate.core.engines.tensorrt_engine import PLAN_INFO_FILE, PlanInfo, current_target
from dgate.core.errors import ExportError
from dgate.core.families import family_of
from dgate.core.pipeline_spec import PipelineSpec

if TYPE_CHECKING:  # typings/tensorrt: the real API's stubs
    import tensorrt

logger = logging.getLogger(__name__)
Shape = tuple[int, ...]
TIMING_CACHE_ENV = "DGATE_TENSORRT_TIMING_CACHE"  # a folder for the timing caches


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


def timing_cache_path(tensorrt: str, compute_capability: str) -> Path:
    """Where builds on this TensorRT and GPU keep their timing cache: $DGATE_TENSORRT_TIMING_CACHE,
    else the user's cache folder. A cache is only valid for one TensorRT version and GPU."""
    base = Path(os.environ.get(TIMING_CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "dgate" / "tensorrt")
    return base / f"timing-trt{tensorrt}-sm{compute_capability.replace('.', '')}.cache"


def weakly_typed_quantization(trt: Any, precision: str) -> bool:
    """TensorRT 10 builds Q/DQ graphs weakly typed with FP16 allowed (the FP32 parts then run in FP16);
    TensorRT 11 has no such flags: strongly typed, FP32 outside the Q/DQ pairs."""
    return precision in ("int8", "fp8") and hasattr(trt.BuilderFlag, "FP16")


def network_flags(trt: Any, precision: str) -> int:
    if weakly_typed_quantization(trt, precision):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def configure(trt: Any, builder: tensorrt.Builder, network: tensorrt.INetworkDefinition, precision: str,
              refittable: Iterable[str], workspace_bytes: int) -> tensorrt.IBuilderConfig:
    """The builder config: workspace, precision flags (TensorRT 10's Q/DQ path only), refit."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":  # FP32 means FP32: TF32 matmuls/convolutions (on by default) round to 10 bits
        config.clear_flag(trt.BuilderFlag.TF32)
    if weakly_typed_quantization(trt, precision):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.INT8 if precision == "int8" else trt.BuilderFlag.FP8)
    names = sorted(refittable)
    if names:
        config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
        refused = [name for name in names if not network.mark_weights_refittable(name)]
        if refused:
            raise ExportError(f"TensorRT cannot make these LoRA weights refittable: {', '.join(refused[:5])}"
                              + (f" and {len(refused) - 5} more" if len(refused) > 5 else ""))
    return config


def require_tensorrt() -> None:
    """Raise the ExportError that says how to get TensorRT when it cannot be imported."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        raise ExportError("--engine tensorrt needs the `tensorrt` package and an NVIDIA GPU "
                          "(make install GPU=1)") from error


def build_engine(onnx_path: Path, plan_path: Path, shapes: dict[str, tuple[Shape, Shape, Shape]],
                 precision: str = "fp16", refittable: Iterable[str] = (), workspace_bytes: int = 8 << 30,
                 device_id: int = 0) -> Path:
    """A TensorRT plan of the ONNX graph (in its own types), refittable for `refittable` (initializer
    names), with its PlanInfo beside it (`engine.json`)."""
    require_tensorrt()
    import tensorrt as trt  # here, not from require_tensorrt: mypy then checks every call against the stubs

    version, capability, gpu = current_target(device_id)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags(trt, precision))
    parser = trt.OnnxParser(network, trt_logger)
    # From the file: the parser then finds the external-data file of a graph over 2 GB beside it.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    refittable = sorted(refittable)
    config = configure(trt, builder, network, precision, refittable, workspace_bytes)
    profile = builder.create_optimization_profile()
    for name, (minimum, optimum, maximum) in shapes.items():
        profile.set_shape(name, trt.Dims(minimum), trt.Dims(optimum), trt.Dims(maximum))
    config.add_optimization_profile(profile)
    cache_path = timing_cache_path(version, capability)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}")
    save_timing_cache(config, cache_path)
    plan_path.write_bytes(memoryview(serialized))
    outputs = tuple(network.get_output(i).name for i in range(network.num_outputs))
    info = PlanInfo(version, capability, gpu, precision, outputs, tuple(refittable))
    (plan_path.parent / PLAN_INFO_FILE).write_text(info.to_json())
    logger.info("built TensorRT engine %s (%s, %d refittable weights)", plan_path, precision, len(refittable))
    return plan_path


def save_timing_cache(config: tensorrt.IBuilderConfig, path: Path) -> None:
    """Written whole then renamed: two builds at once never leave a torn cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(bytes(config.get_timing_cache().serialize()))
    partial.replace(path)


def plan_files(plan_path: Path) -> dict[str, Path]:
    """The plan and its PlanInfo, as a model folder's files."""
    return {plan_path.name: plan_path, PLAN_INFO_FILE: plan_path.parent / PLAN_INFO_FILE}


def save_refit_weights(onnx_path: Path, names: set[str], path: Path) -> Path:
    """The base values of the refittable weights, in the graph's types: the TensorRT engine refits
    from these (a plan holds its weights in its own layout, which cannot be read back)."""
    from safetensors.numpy import save_file

    from dgate.core.onnx_session import load_initializers

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_initializers(onnx_path, names), str(path))
    return path
