"""`dgate calibrate`: post-training quantization of a pipeline's UNet/transformer with nvidia-modelopt.

The denoiser is calibrated by running the real diffusers pipeline (text encoders, CFG, scheduler,
the pipeline's own step count) over a prompt file, so activation ranges are those the served loop
produces. The quantized module is then exported with the same exporter `dgate export` uses and
checked in ONNX Runtime against the fake-quantized PyTorch module; INT8 weights are stored as INT8.
The output folder (`<component>/model.onnx` + `quantization.json`) is what `dgate export --quantized`
takes; it is written to a temporary folder and renamed into place, so a failure leaves nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import torch
from tqdm import tqdm

from dgate.calibration.qdq import fold_weight_quantizers, needs_tensorrt, quantized_layers
from dgate.calibration.recipe import CalibrationRecipe
from dgate.core.component_modules import component_module
from dgate.core.errors import ExportError
from dgate.core.families import spec_from_pipeline
from dgate.core.quantization import MANIFEST_FILE, FusedAdapter, Quantization, adapter_digest
from dgate.export.onnx_export import MODEL_FILE, export_onnx, save_onnx, verify_onnx
from dgate.export.pipeline_export import check_inputs, load_pipeline, pipeline_name, trace_inputs
from dgate.export.quantized import config_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationResult:
    out: Path
    quantization: Quantization
    onnx_error: float | None  # max abs error, ONNX Runtime vs the fake-quantized PyTorch module (None: FP8)
    onnx_bytes: int


def fuse_adapters(pipe: Any, adapters: tuple[tuple[Path, float], ...]) -> tuple[tuple[FusedAdapter, ...], set[str]]:
    """Merge each adapter into the weights with diffusers' own loader, as a served refit would apply it.

    Returns the adapters and the components they changed (the text encoders among them are exported
    with the quantized denoiser, since the base model's no longer match).
    """
    if adapters and not hasattr(pipe, "load_lora_weights"):
        raise ExportError(f"{type(pipe).__name__} has no diffusers LoRA loader: --fuse-lora is not available")
    fused, changed = [], set()
    for index, (path, scale) in enumerate(adapters):
        if not path.exists():
            raise ExportError(f"--fuse-lora: no adapter at {path}")
        name = f"fused_{index}"
        if path.is_dir():
            pipe.load_lora_weights(str(path), adapter_name=name)
        else:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        changed |= {component for component, names in pipe.get_list_adapters().items() if name in names}
        pipe.fuse_lora(lora_scale=scale, adapter_names=[name])
        pipe.unload_lora_weights()  # the fused weights stay; the peft layers go
        fused.append(FusedAdapter(name=path.name, sha256=adapter_digest(path), scale=scale))
    return tuple(fused), changed


def _calibration_loop(pipe: Any, prompts: list[str], recipe: CalibrationRecipe, size: int, steps: int):
    def forward_loop(_model: Any) -> None:
        generator = torch.Generator().manual_seed(recipe.seed)
        batches = [prompts[i:i + recipe.batch_size] for i in range(0, len(prompts), recipe.batch_size)]
        extra = {} if recipe.guidance_scale is None else {"guidance_scale": recipe.guidance_scale}
        for batch in tqdm(batches, desc=f"calibrate {recipe.precision}", unit="batch"):
            pipe(batch, num_inference_steps=steps, height=size, width=size, generator=generator,
                 output_type="latent", **extra)
    return forward_loop


def calibrate(model: str, out: Path, recipe: CalibrationRecipe, prompts: list[str]) -> CalibrationResult:
    """Quantize `model`'s denoiser over `prompts` and write the Q/DQ ONNX and manifest to `out`."""
    import modelopt.torch.quantization as mtq  # heavy; only this command needs it

    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty")
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    fused, changed = fuse_adapters(pipe, recipe.fused_adapters)
    spec = spec_from_pipeline(pipe, pipeline_name(model))
    component = spec.denoiser_component
    fused_encoders = tuple(e.component for e in spec.text_encoders if e.component in changed)
    denoiser = getattr(pipe, component)
    source = config_digest(denoiser)
    size = recipe.size or spec.limits.default_width
    steps = recipe.steps or spec.limits.default_steps
    with torch.inference_mode(False):  # modelopt's calibrators update buffers
        mtq.quantize(denoiser, recipe.modelopt_config(), _calibration_loop(pipe, prompts, recipe, size, steps))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch_root:
        scratch = Path(scratch_root)
        module = component_module(pipe, spec, component)
        traced = export_onnx(module, spec, component, trace_inputs(spec, component), scratch / "traced")
        graph = onnx.load(str(traced[MODEL_FILE]))
        layers = quantized_layers(graph)
        if not layers:
            raise ExportError("no layer was quantized: check --exclude (it matched every quantizable layer)")
        fp8 = needs_tensorrt(graph)
        if not fp8:
            logger.info("folded %d weight quantizers into INT8 tensors", fold_weight_quantizers(graph))
        files = save_onnx(graph, scratch / "result" / component)
        del graph
        onnx_error = None
        if not fp8:  # ONNX Runtime runs INT8 Q/DQ; the check is against the fake-quantized module
            check = verify_onnx(module, files[MODEL_FILE], component, recipe.precision, check_inputs(spec, component))
            onnx_error = check.max_abs_error
        for encoder in fused_encoders:  # FP32, checked against the fused PyTorch encoder
            encoder_module = component_module(pipe, spec, encoder)
            encoder_files = export_onnx(encoder_module, spec, encoder, trace_inputs(spec, encoder),
                                        scratch / "result" / encoder)
            verify_onnx(encoder_module, encoder_files[MODEL_FILE], encoder, "fp32", check_inputs(spec, encoder))
        quantization = Quantization(
            precision=recipe.precision, component=component, algorithm=recipe.algorithm,
            alpha=recipe.alpha if recipe.algorithm == "smoothquant" else None, excluded=recipe.excluded,
            calibration_prompts=len(prompts), calibration_steps=steps, quantized_layers=len(layers),
            tool=f"nvidia-modelopt {metadata.version('nvidia-modelopt')}", source_config_sha256=source,
            fused_adapters=fused, fused_components=fused_encoders,
        )
        (scratch / "result" / MANIFEST_FILE).write_text(quantization.to_json())
        if out.exists():
            out.rmdir()  # empty, checked above
        shutil.move(str(scratch / "result"), str(out))
    onnx_bytes = sum(f.stat().st_size for f in (out / component).iterdir())
    logger.info("%s: %d layers quantized to %s, %d bytes", out, len(layers), recipe.precision, onnx_bytes)
    return CalibrationResult(out=out, quantization=quantization, onnx_error=onnx_error, onnx_bytes=onnx_bytes)
