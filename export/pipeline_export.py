"""`dgate export`: a diffusers pipeline (directory or hub id) -> models in a Triton repository."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from tqdm import tqdm

from dgate.core.errors import ExportError
from dgate.core.pipeline_spec import PipelineSpec
from dgate.export.onnx_export import VerifyResult, convert_to_fp16, export_onnx, sample_inputs, verify_onnx
from dgate.export.repository import PIPELINE_FILE, SCHEDULER_FILE, TOKENIZER_DIR, model_shim, write_model
from dgate.export.tensorrt_build import build_engine, profile_shapes
from dgate.export.triton_config import (
    ServingOptions,
    component_config,
    denoiser_config,
    ensemble_config,
    postprocess_config,
    tokenize_config,
)
from dgate.export.wrappers import component_module

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportReport:
    spec: PipelineSpec
    checks: tuple[VerifyResult, ...]


def load_pipeline(model: str) -> DiffusionPipeline:
    """The same loader for a local diffusers directory and a hub id (cached or downloaded by the user)."""
    return DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)


def pipeline_name(model: str) -> str:
    return Path(model.rstrip("/")).name


def export_pipeline(
    model: str,
    repository: Path,
    *,
    name: str | None = None,
    precision: str = "fp32",
    options: ServingOptions | None = None,
    max_size: int | None = None,
    default_steps: int | None = None,
) -> ExportReport:
    options = options or ServingOptions()
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if options.engine == "tensorrt" and options.triton_backend != "native":
        raise ExportError("TensorRT engines are served by Triton's native tensorrt backend: "
                          "use --triton-backend native")
    pipe = load_pipeline(model)
    spec = PipelineSpec.from_pipeline(pipe, name or pipeline_name(model), max_size=max_size,
                                      default_steps=default_steps)
    limits = spec.limits
    checks = []
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".export-{spec.name}.") as scratch_root:
        scratch = Path(scratch_root)
        progress = tqdm(spec.exported_components, desc=f"export {spec.name}", unit="model")
        for component in progress:
            progress.set_postfix_str(component)
            module = component_module(pipe, spec, component)
            # Trace off the native size: DiTs then compute their position embedding from the input
            # size instead of baking in the stored table, so the graph stays valid at every size.
            onnx_path = export_onnx(
                module, spec, component,
                sample_inputs(pipe, spec, component, 2, limits.default_height,
                              limits.default_width + limits.size_multiple, seed=0),
                scratch / component / "fp32" / "model.onnx",
            )
            # Check at other batch sizes and at the native and a non-square size (the dynamic axes).
            checks_inputs = [
                sample_inputs(pipe, spec, component, 3, limits.default_height, limits.default_width, seed=1),
                sample_inputs(pipe, spec, component, 1, limits.default_height + 2 * limits.size_multiple,
                              limits.default_width, seed=2),
            ]
            checks.append(verify_onnx(module, onnx_path, component, "fp32", checks_inputs))
            # T5 overflows in FP16 (diffusers keeps it in FP32/BF16), so T5 text encoders stay FP32.
            if precision == "fp16" and not (component == "text_encoder" and spec.uses_attention_mask):
                onnx_path = convert_to_fp16(onnx_path, scratch / component / "model.onnx")
                checks.append(verify_onnx(module, onnx_path, component, "fp16", checks_inputs))
            files: dict[str, Path | str] = {"model.onnx": onnx_path}
            if options.engine == "tensorrt":
                config = component_config(spec, component, options)
                shapes = profile_shapes(spec, spec.component_io(component)[0], config.max_batch_size)
                files = {"model.plan": build_engine(onnx_path, scratch / component / "model.plan", shapes)}
            if options.triton_backend == "python":
                files["model.py"] = model_shim("component_model", f"{spec.name} {component}")
            write_model(repository, component_config(spec, component, options), files)

        pipe.tokenizer.save_pretrained(scratch / TOKENIZER_DIR)
        spec_json = spec.to_json()
        write_model(repository, tokenize_config(spec), {
            TOKENIZER_DIR: scratch / TOKENIZER_DIR,
            PIPELINE_FILE: spec_json,
            "model.py": model_shim("tokenizer_model", f"{spec.name} tokenizer"),
        })
        write_model(repository, denoiser_config(spec, options), {
            PIPELINE_FILE: spec_json,
            SCHEDULER_FILE: pipe.scheduler.to_json_string(),
            "model.py": model_shim("denoiser_model", f"{spec.name} scheduler loop"),
        })
        write_model(repository, postprocess_config(spec), {
            "model.py": model_shim("postprocess_model", f"{spec.name} postprocess"),
        })
        write_model(repository, ensemble_config(spec), {})
    logger.info("exported %s to %s", spec.name, repository)
    return ExportReport(spec=spec, checks=tuple(checks))


def pipe_module(pipe: DiffusionPipeline, spec: PipelineSpec, component: str) -> torch.nn.Module:
    from export.wrappers import component_module

    return component_module(pipe, spec, component)
