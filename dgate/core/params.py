"""The values of one generation request, shared by the frontend (torch-free) and the denoiser."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DenoiseParams:
    """What the denoiser sees: every ensemble input except the prompt text (already encoded)."""

    num_images: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    scheduler: str

    @property
    def uses_guidance(self) -> bool:
        # diffusers: do_classifier_free_guidance = guidance_scale > 1
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class GenerationParams(DenoiseParams):
    """One ensemble request; field names are the ENSEMBLE_INPUTS tensor names."""

    prompt: str
    negative_prompt: str
