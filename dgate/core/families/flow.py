"""What the flow-matching families (SD3, Flux) share: timesteps from sigmas with a resolution shift."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from dgate.core.families.base import Family
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec


def calculate_shift(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float,
                    max_shift: float) -> float:
    """diffusers' `calculate_shift` (the same float operations), without importing its pipelines."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


class FlowMatchingFamily(Family):
    flow_matching = True
    scales_model_input = False  # flow schedulers take the latents as they are
    default_max_shift: ClassVar[float]  # the pipelines differ: SD3 1.16, Flux 1.15

    def image_seq_len(self, spec: PipelineSpec, params: DenoiseParams) -> int:
        _, _, height, width = spec.latent_shape(1, params.height, params.width)
        return (height // spec.patch_size) * (width // spec.patch_size)

    def shift_mu(self, scheduler: Any, spec: PipelineSpec, params: DenoiseParams) -> float | None:
        """The resolution-dependent shift, for schedulers configured with dynamic shifting."""
        config = scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return None
        return calculate_shift(self.image_seq_len(spec, params), config.get("base_image_seq_len", 256),
                               config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                               config.get("max_shift", self.default_max_shift))

    def sigmas(self, scheduler: Any, params: DenoiseParams) -> np.ndarray | None:
        return None

    def edit_start(self, params: DenoiseParams) -> int:
        # SD3's and Flux's get_timesteps keep steps * strength as a float before truncating.
        steps = params.num_inference_steps
        return int(max(steps - min(steps * params.strength, steps), 0))

    def add_noise(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The flow pipelines call scale_noise (sigma * noise + (1 - sigma) * latents). DPM-Solver over
        # flow sigmas ("flow_dpm++") has no scale_noise, and the pipelines fail with it; its add_noise
        # is the same interpolation (alpha_t = 1 - sigma, sigma_t = sigma).
        if hasattr(scheduler, "scale_noise"):
            return scheduler.scale_noise(latents, t, noise)
        return scheduler.add_noise(latents, noise, t)

    def set_timesteps(self, scheduler: Any, spec: PipelineSpec, params: DenoiseParams) -> None:
        # diffusers' retrieve_timesteps: explicit sigmas replace the step count.
        kwargs: dict[str, Any] = {}
        mu = self.shift_mu(scheduler, spec, params)
        if mu is not None:
            kwargs["mu"] = mu
        sigmas = self.sigmas(scheduler, params)
        if sigmas is not None:
            scheduler.set_timesteps(sigmas=sigmas, **kwargs)
        else:
            scheduler.set_timesteps(params.num_inference_steps, **kwargs)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
