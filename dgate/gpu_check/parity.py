"""(a) Parity: the tiny pipelines run through D-Gate's image program on each engine, against diffusers
on the same device. FP32 must match within PIXEL_BOUND levels; on a GPU an FP16 denoiser on the torch
engine is measured too (PSNR against diffusers' FP32 images)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.gpu_check.report import MEASURED, CaseResult, pixel_parity, psnr, skipped
from dgate.gpu_check.workspace import TinyModel, Workspace, engine_call, with_denoiser_precision

SECTION = "parity"
PIPELINES = ("tiny-sd", "tiny-sdxl", "tiny-flux")
ENGINES = ("torch", "onnxruntime", "tensorrt")
FP16_ENGINE = "torch fp16"


def request_values(model: TinyModel, steps: int) -> dict[str, Any]:
    """One request of two images; off-square where the family allows (Flux packs 2x2 latents)."""
    flux = model.spec.family == "flux"
    return {"prompt": "a lighthouse at dusk", "negative_prompt": "", "num_images": 2, "num_inference_steps": steps,
            "guidance_scale": 3.5 if flux else 4.0, "seed": 11, "height": 64 if flux else 48, "width": 64,
            "scheduler": "default", "max_sequence_length": 0, "true_cfg_scale": 1.0}


def denoise_params(values: dict[str, Any]) -> DenoiseParams:
    return DenoiseParams(**{k: values[k] for k in DenoiseParams.__dataclass_fields__ if k in values})


def served_images(workspace: Workspace, model: TinyModel, spec: PipelineSpec, engine: str,
                  values: dict[str, Any], lora: str = "") -> np.ndarray:
    """D-Gate's program in process, the denoiser and VAE decoder on `engine` (text from PyTorch)."""
    from dgate.core.generate import image_program
    from dgate.core.program import run_blocking
    from dgate.core.schedulers import SchedulerFactory
    from dgate.reference import torch_text_outputs

    engines = {component: workspace.load(model, engine, component, spec)
               for component in (spec.denoiser_component, "vae_decoder")}
    params = denoise_params(values)
    text = torch_text_outputs(model.pipe, spec, values["prompt"], params.negative_prompt, params.max_sequence_length)
    program = image_program(spec, params, SchedulerFactory(dict(model.pipe.scheduler.config)), text)
    return run_blocking(program, engine_call(spec, engines, lora))


class Parity:
    """The parity cases, sharing each pipeline's diffusers images between its engines."""

    def __init__(self, workspace: Workspace, steps: int) -> None:
        self.workspace = workspace
        self.steps = steps
        self._references: dict[str, np.ndarray] = {}

    def reference(self, model: TinyModel, values: dict[str, Any]) -> np.ndarray:
        """diffusers' own images on the check's device."""
        if model.name not in self._references:
            from dgate.reference import diffusers_images

            pipe = model.pipe
            if self.workspace.environment.on_gpu:  # a copy: the CPU one feeds the text encoders
                from diffusers import DiffusionPipeline

                pipe = DiffusionPipeline.from_pretrained(str(model.path)).to("cuda")
            self._references[model.name] = diffusers_images(pipe, values)
            del pipe
        return self._references[model.name]

    def fp32(self, name: str, engine: str) -> CaseResult:
        model = self.workspace.tiny(name)
        values = request_values(model, self.steps)
        served = served_images(self.workspace, model, model.spec, engine, values)
        result = pixel_parity(SECTION, name, engine, served, self.reference(model, values))
        result.values["steps"] = self.steps
        return result

    def fp16(self, name: str) -> CaseResult:
        model = self.workspace.tiny(name)
        values = request_values(model, self.steps)
        spec = with_denoiser_precision(model.spec, "fp16")
        served = served_images(self.workspace, model, spec, "torch", values)
        expected = self.reference(model, values)
        decibels = psnr(served, expected)
        difference = int(np.abs(served.astype(np.int32) - expected.astype(np.int32)).max())
        return CaseResult(SECTION, name, FP16_ENGINE, MEASURED, f"PSNR {decibels:.1f} dB vs diffusers FP32",
                          values={"psnr_db": decibels, "max_pixel_difference": difference, "steps": self.steps})

    def skip(self, name: str, engine: str) -> CaseResult | None:
        missing = self.workspace.environment.engine_missing(engine)
        return None if missing is None else skipped(SECTION, name, engine, missing)
