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

from dgate.core.component_modules import component_module
from dgate.core.engines.tensorrt_engine import PLAN_FILE, REFIT_WEIGHTS_FILE
from dgate.core.errors import ExportError
from dgate.core.families import spec_from_pipeline
from dgate.core.lora.weight_map import LORA_MAP_FILE, LoraMap, build_lora_map
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
from dgate.export.tensorrt_build import (
    build_engine,
    plan_files,
    profile_shapes,
    require_tensorrt,
    save_refit_weights,
)
from dgate.export.triton_config import (
    TORCH_QUANTIZED,
    ServingOptions,
    cancel_config,
    component_config,
    denoiser_config,
    ensemble_config,
    lora_config,
    takes_lora,
    tokenize_config,
    unservable,
    video_denoiser_config,
)

logger = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ExportReport:
    spec: PipelineSpec
    checks: tuple[VerifyResult, ...]


def load_pipeline(model: str) -> Any:  # a DiffusionPipeline; its annotations miss the components
    """The same loader for a local diffusers directory and a hub id (cached or downloaded by the user).
    A path or id that holds no pipeline is an ExportError in one line, not diffusers' traceback."""
    try:
        return DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:  # diffusers' and huggingface_hub's "not found" errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"no diffusers pipeline could be loaded from {model!r} (a folder with "
                          f"model_index.json, or a hub id in the local cache): {reason}") from error


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
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    reason = unservable(options)
    if reason is not None:
        raise ExportError(reason)
    if quantized is not None and options.engine == "torch":
        raise ExportError(TORCH_QUANTIZED)
    if options.engine == "tensorrt":
        require_tensorrt()  # before minutes of ONNX export, not after them
    pipe = load_pipeline(model)
    spec = derive_spec(pipe, name or pipeline_name(model), precision=precision, max_size=max_size,
                       default_steps=default_steps, default_scheduler=default_scheduler)
    calibrated: dict[str, Path] = {}
    if quantized is not None:
        spec, calibrated = apply_quantization(spec, pipe, quantized, options.engine)
    served = pipeline_options(spec, options)
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".export-{spec.name}.") as scratch_root:
        scratch = Path(scratch_root)
        checks = export_components(pipe, spec, served, repository, scratch, calibrated, external_data_threshold)
        write_pipeline_models(pipe, spec, served, repository, scratch)
        write_shared_models(repository, options)
        write_model(repository, ensemble_config(spec, served), {})
    logger.info("exported %s to %s", spec.name, repository)
    return ExportReport(spec=spec, checks=tuple(checks))


def derive_spec(pipe: Any, name: str, *, precision: str, max_size: int | None, default_steps: int | None,
                default_scheduler: str | None) -> PipelineSpec:
    """The pipeline's spec from its configs, with the partial-image map fitted to its VAE (images)."""
    try:
        spec = spec_from_pipeline(pipe, name, max_size=max_size, default_steps=default_steps,
                                  precision=precision, default_scheduler=default_scheduler)
    except ValueError as error:
        raise ExportError(str(error)) from error
    if spec.capabilities.is_video:
        return spec
    return replace(spec, preview_rgb=fit_preview_map(pipe, spec))


def apply_quantization(spec: PipelineSpec, pipe: Any, quantized: Path, engine: str
                       ) -> tuple[PipelineSpec, dict[str, Path]]:
    """The spec serving `dgate calibrate`'s output in `quantized`, and the components taken from there
    (component -> folder): the quantized denoiser, and text encoders with fused adapters (checked
    there against the fused PyTorch encoder; this base one no longer matches)."""
    quantization = load_quantization(quantized, pipe, spec.denoiser_component, engine)
    spec = replace(spec, quantization=quantization,
                   capabilities=replace(spec.capabilities, precision=quantization.precision),
                   precisions=spec.precisions | {spec.denoiser_component: quantization.precision})
    return spec, dict.fromkeys(quantization.components, quantized)


def pipeline_options(spec: PipelineSpec, options: ServingOptions) -> ServingOptions:
    """The options this pipeline is served with. Refit cannot reach quantized weights: the pipeline
    serves no LoRA (dgate_lora still answers for it). Video pipelines take no adapters yet."""
    if spec.quantization is not None or spec.capabilities.is_video:
        return replace(options, lora=False)
    return options


def export_components(pipe: Any, spec: PipelineSpec, options: ServingOptions, repository: Path, scratch: Path,
                      calibrated: dict[str, Path], external_data_threshold: int) -> list[VerifyResult]:
    """Every component's Triton model (ONNX Runtime or TensorRT); returns the checks against PyTorch."""
    checks: list[VerifyResult] = []
    progress = tqdm(spec.exported_components, desc=f"export {spec.name}", unit="model")
    for component in progress:
        progress.set_postfix_str(component)
        component_checks, files = export_component(pipe, spec, component, options, scratch / component,
                                                   calibrated.get(component), external_data_threshold)
        checks += component_checks
        write_model(repository, component_config(spec, component, options), files)
    return checks


def export_component(pipe: Any, spec: PipelineSpec, component: str, options: ServingOptions, scratch: Path,
                     calibrated: Path | None, external_data_threshold: int
                     ) -> tuple[list[VerifyResult], dict[str, Path | str]]:
    """One component's ONNX (exported, or `dgate calibrate`'s from `calibrated`), checked against
    PyTorch at FP32 and at its precision, with its LoRA map: its checks and its model's files."""
    checks: list[VerifyResult] = []
    if options.engine == "torch":
        return [], torch_files(pipe, spec, component, scratch, takes_lora(spec, component, options))
    module = component_module(pipe, spec, component)
    check_sets = check_inputs(spec, component)
    if calibrated is not None:
        files = quantized_files(calibrated, component, copy_to=scratch / "calibrated")
        if spec.quantization is not None and component == spec.denoiser_component:
            checks.append(verify_quantized(module, files[MODEL_FILE], component, spec.quantization, check_sets))
    else:
        files = export_onnx(module, spec, component, trace_inputs(spec, component), scratch / "fp32",
                            external_data_threshold)
        checks.append(verify_onnx(module, files[MODEL_FILE], component, "fp32", check_sets))
    lora_map = None
    if takes_lora(spec, component, options):
        # Matched on the FP32 graph, by value; FP16 conversion keeps initializer names.
        lora_map = build_lora_map(getattr(pipe, component), load_all_initializers(files[MODEL_FILE]))
    if spec.precision(component) == "fp16":
        files = convert_to_fp16(files[MODEL_FILE], scratch / "fp16", external_data_threshold)
        if calibrated is None:
            checks.append(verify_onnx(module, files[MODEL_FILE], component, "fp16", check_sets))
    del module  # before a TensorRT build: full-size modules are gigabytes
    return checks, served_files(spec, component, options, files, lora_map, scratch)


def torch_files(pipe: Any, spec: PipelineSpec, component: str, scratch: Path, lora: bool
                ) -> dict[str, Path | str]:
    """The torch engine's model folder: the pipeline's own modules (`save_pretrained`), the spec it
    wraps them by, the shim, and with LoRA the map of the module's own layers (what dgate_lora checks
    adapters against). Nothing is exported, so nothing is checked: it serves these modules."""
    from dgate.core.engines.torch_engine import lora_map_of, save_torch_component

    files = save_torch_component(pipe, spec, component, scratch / "torch")
    if lora:
        files[LORA_MAP_FILE] = lora_map_of(getattr(pipe, component)).to_json()
    return files | {PIPELINE_FILE: spec.to_json(),
                    "model.py": model_shim("component_model", f"{spec.name} {component} (torch)")}


def served_files(spec: PipelineSpec, component: str, options: ServingOptions, files: dict[str, Path],
                 lora_map: LoraMap | None, scratch: Path) -> dict[str, Path | str]:
    """What the component's model folder holds: the ONNX files or a TensorRT engine built from them,
    the Python shim (Python backend), the LoRA map and the spec it reads (LoRA)."""
    served: dict[str, Path | str] = dict(files)
    if options.engine == "tensorrt":
        shapes = profile_shapes(spec, component, component_config(spec, component, options).max_batch_size)
        refittable = lora_map.initializers if lora_map is not None else set()
        plan = build_engine(files[MODEL_FILE], scratch / "plan" / PLAN_FILE, shapes,
                            precision=spec.precision(component), refittable=refittable)
        served = dict(plan_files(plan))
        if refittable:
            served[REFIT_WEIGHTS_FILE] = save_refit_weights(files[MODEL_FILE], refittable,
                                                            scratch / "plan" / REFIT_WEIGHTS_FILE)
    if options.triton_backend == "python":
        served["model.py"] = model_shim("component_model", f"{spec.name} {component}")
    if lora_map is not None:
        served |= {LORA_MAP_FILE: lora_map.to_json(), PIPELINE_FILE: spec.to_json()}
    return served


def write_pipeline_models(pipe: Any, spec: PipelineSpec, options: ServingOptions, repository: Path,
                          scratch: Path) -> None:
    """The pipeline's Python models: the tokenizer (when it has text encoders) and the denoiser."""
    spec_json = spec.to_json()
    if spec.text_encoders:
        tokenizer_files: dict[str, Path | str] = {
            encoder.tokenizer: save_prompt_tokenizer(getattr(pipe, encoder.tokenizer),
                                                     scratch / "tokenizers" / encoder.tokenizer).parent
            for encoder in spec.text_encoders
        }
        write_model(repository, tokenize_config(spec, options), tokenizer_files | {
            PIPELINE_FILE: spec_json,
            "model.py": model_shim("tokenizer_model", f"{spec.name} tokenizer"),
        })
    if spec.capabilities.is_video:
        config, denoiser_module = video_denoiser_config(spec, options), "video_denoiser_model"
    else:
        config = denoiser_config(spec, options)
        denoiser_module = "async_image_denoiser_model" if options.streams else "blocking_image_denoiser_model"
    write_model(repository, config, {
        PIPELINE_FILE: spec_json,
        SCHEDULER_FILE: pipe.scheduler.to_json_string(),
        "model.py": model_shim(denoiser_module, f"{spec.name} scheduler loop"),
    })
    # A repository exported before issue 10 holds a postprocess model whose shim imports a module that
    # is gone: Triton would fail to load it (the default repository, build/, outlives checkouts).
    shutil.rmtree(repository / model_name(spec.name, "postprocess"), ignore_errors=True)


def write_shared_models(repository: Path, options: ServingOptions) -> None:
    """The models every pipeline shares; rewriting them on each export is harmless."""
    write_model(repository, cancel_config(options), {"model.py": model_shim("cancel_model", "cancellations")})
    if options.serves_lora:  # as asked: a quantized or video pipeline still gets dgate_lora's answers
        write_model(repository, lora_config(options), {"model.py": model_shim("lora_model", "adapter checks")})
