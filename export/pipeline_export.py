"""`dgate export`: a diffusers pipeline (directory or hub id) -> models in a Triton repository."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from tqdm import tqdm

from dgate.core.errors import ExportError
from dgate.core.families import spec_from_pipeline
from dgate.core.lora.weight_map import LORA_MAP_FILE, build_lora_map
from dgate.core.onnx_session import load_all_initializers
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import model_name
from dgate.core.tokenization import save_prompt_tokenizer
from dgate.export.onnx_export import (
    EXTERNAL_DATA_THRESHOLD,
    MODEL_FILE,
    VerifyResult,
    convert_to_fp16,
    export_onnx,
    sample_inputs,
    verify_onnx,
)
from dgate.export.preview_map import fit_preview_map
from dgate.export.quantized import load_quantization, quantized_files, verify_quantized
from dgate.export.repository import PIPELINE_FILE, SCHEDULER_FILE, model_shim, write_model
from dgate.export.tensorrt_build import build_engine, profile_shapes
from dgate.export.triton_config import (
    ServingOptions,
    cancel_config,
    component_config,
    denoiser_config,
    ensemble_config,
    lora_config,
    takes_lora,
    tokenize_config,
    video_denoiser_config,
)
from dgate.export.wrappers import component_module

logger = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ExportReport:
    spec: PipelineSpec
    checks: tuple[VerifyResult, ...]


def load_pipeline(model: str) -> Any:  # a DiffusionPipeline; its annotations miss the components
    """The same loader for a local diffusers directory and a hub id (cached or downloaded by the user)."""
    return DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)


# Video: frames traced and checked at (few, so that full-size video models export in bounded memory).
TRACE_FRAMES, CHECK_FRAMES = 4, (5, 3)


def trace_inputs(spec: PipelineSpec, component: str) -> dict[str, torch.Tensor]:
    """Trace off the native size: DiTs then compute their position embedding from the input size
    instead of baking in the stored table, so the graph stays valid at every size."""
    limits = spec.limits
    return sample_inputs(spec, component, 2, limits.default_height, limits.default_width + limits.size_multiple,
                         seed=0, frames=TRACE_FRAMES)


def check_inputs(spec: PipelineSpec, component: str) -> list[dict[str, torch.Tensor]]:
    """Other batch sizes, the native and a non-square size, and a shorter T5 prompt (video: other
    frame counts): the dynamic axes."""
    limits = spec.limits
    return [
        sample_inputs(spec, component, 3, limits.default_height, limits.default_width, seed=1,
                      frames=CHECK_FRAMES[0]),
        sample_inputs(spec, component, 1, limits.default_height + 2 * limits.size_multiple, limits.default_width,
                      seed=2, t5_length=max(1, limits.default_max_sequence_length // 2), frames=CHECK_FRAMES[1]),
    ]


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
    default_scheduler: str | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    quantized: Path | None = None,
) -> ExportReport:
    """Export every component of `model`, check each against PyTorch, and write its Triton models.

    `quantized`: the output folder of `dgate calibrate` for this model; its denoiser is served instead.
    """
    options = options or ServingOptions()
    repository_options = options
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if options.engine == "tensorrt" and options.triton_backend != "native":
        raise ExportError("TensorRT engines are served by Triton's native tensorrt backend: "
                          "use --triton-backend native")
    pipe = load_pipeline(model)
    try:
        spec = spec_from_pipeline(pipe, name or pipeline_name(model), max_size=max_size, default_steps=default_steps,
                                  precision=precision, default_scheduler=default_scheduler)
    except ValueError as error:
        raise ExportError(str(error)) from error
    video = spec.limits.is_video
    if not video:
        spec = replace(spec, preview_rgb=fit_preview_map(pipe, spec))
    # Refit cannot reach quantized weights: the pipeline serves no LoRA (dgate_lora still answers for
    # it). Video pipelines take no adapters yet.
    if quantized or video:
        options = replace(options, lora=False)
    # From `dgate calibrate`: the quantized denoiser, and text encoders with fused adapters (checked
    # there against the fused PyTorch encoder; this base one no longer matches). Component -> folder.
    calibrated: dict[str, Path] = {}
    if quantized is not None:
        quantization = load_quantization(quantized, pipe, spec.denoiser_component, options.engine)
        spec = replace(spec, quantization=quantization,
                       limits=replace(spec.limits, precision=quantization.precision),
                       precisions=spec.precisions | {spec.denoiser_component: quantization.precision})
        calibrated = dict.fromkeys(quantization.components, quantized)
    checks = []
    lora_maps: dict[str, str] = {}  # component -> its LoraMap as JSON text
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".export-{spec.name}.") as scratch_root:
        scratch = Path(scratch_root)
        progress = tqdm(spec.exported_components, desc=f"export {spec.name}", unit="model")
        for component in progress:
            progress.set_postfix_str(component)
            module = component_module(pipe, spec, component)
            checks_inputs = check_inputs(spec, component)
            if component in calibrated:
                files = quantized_files(calibrated[component], component, copy_to=scratch / component / "calibrated")
                if spec.quantization is not None and component == spec.denoiser_component:
                    checks.append(verify_quantized(module, files[MODEL_FILE], component, spec.quantization,
                                                   checks_inputs))
            else:
                files = export_onnx(module, spec, component, trace_inputs(spec, component),
                                    scratch / component / "fp32", external_data_threshold)
                checks.append(verify_onnx(module, files[MODEL_FILE], component, "fp32", checks_inputs))
            if takes_lora(spec, component, options):
                # Matched on the FP32 graph, by value; FP16 conversion keeps initializer names.
                lora_map = build_lora_map(getattr(pipe, component), load_all_initializers(files[MODEL_FILE]))
                lora_maps[component] = lora_map.to_json()
            if spec.precision(component) == "fp16":
                files = convert_to_fp16(files[MODEL_FILE], scratch / component / "fp16", external_data_threshold)
                if component not in calibrated:
                    checks.append(verify_onnx(module, files[MODEL_FILE], component, "fp16", checks_inputs))
            del module
            component_files: dict[str, Path | str] = dict(files)
            if options.engine == "tensorrt":
                config = component_config(spec, component, options)
                shapes = profile_shapes(spec, component, config.max_batch_size)
                plan = build_engine(files[MODEL_FILE], scratch / component / "model.plan", shapes,
                                    precision=spec.precision(component))
                component_files = {"model.plan": plan}
            if options.triton_backend == "python":
                component_files["model.py"] = model_shim("component_model", f"{spec.name} {component}")
            if component in lora_maps:
                component_files |= {LORA_MAP_FILE: lora_maps[component], PIPELINE_FILE: spec.to_json()}
            write_model(repository, component_config(spec, component, options), component_files)

        spec_json = spec.to_json()
        tokenizer_files: dict[str, Path | str] = {
            encoder.tokenizer: save_prompt_tokenizer(getattr(pipe, encoder.tokenizer),
                                                     scratch / "tokenizers" / encoder.tokenizer).parent
            for encoder in spec.text_encoders
        }
        if spec.text_encoders:
            write_model(repository, tokenize_config(spec, options), tokenizer_files | {
                PIPELINE_FILE: spec_json,
                "model.py": model_shim("tokenizer_model", f"{spec.name} tokenizer"),
            })
        image_denoiser = "image_denoiser_model" if options.streams else "denoiser_model"
        denoiser = (video_denoiser_config(spec, options), "video_denoiser_model") if video else (
            denoiser_config(spec, options), image_denoiser)
        write_model(repository, denoiser[0], {
            PIPELINE_FILE: spec_json,
            SCHEDULER_FILE: pipe.scheduler.to_json_string(),
            "model.py": model_shim(denoiser[1], f"{spec.name} scheduler loop"),
        })
        # The same model for every pipeline: rewriting it is harmless.
        write_model(repository, cancel_config(options), {"model.py": model_shim("cancel_model", "cancellations")})
        # Before 0.10 images were made uint8 by a postprocess model; the denoiser does it now.
        shutil.rmtree(repository / model_name(spec.name, "postprocess"), ignore_errors=True)
        if repository_options.serves_lora:  # the same model for every pipeline: rewriting it is harmless
            write_model(repository, lora_config(options), {"model.py": model_shim("lora_model", "adapter checks")})
        write_model(repository, ensemble_config(spec, options), {})
    logger.info("exported %s to %s", spec.name, repository)
    return ExportReport(spec=spec, checks=tuple(checks))
