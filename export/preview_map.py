"""The linear latent -> RGB map that partial images are drawn with, fitted to the pipeline's own VAE.

A preview must cost next to nothing per step (no VAE decode), so it is one matrix product per
latent pixel. Rather than a table of per-model factors, the map is fitted here by least squares:
decode a few random latents (the denoiser's scaled latent space is close to unit variance) with the
pipeline's VAE decoder, average each decoded patch down to latent resolution, and solve.
"""

from __future__ import annotations

from typing import Any

import torch

from dgate.core.component_modules import VaeDecoderWrapper
from dgate.core.pipeline_spec import PipelineSpec

FIT_SAMPLES = 4
FIT_LATENT_SIZE = 16  # latent pixels per side: 128 px images with an 8x VAE


def fit_preview_map(pipe: Any, spec: PipelineSpec) -> tuple[tuple[float, ...], ...]:
    """Rows: one per latent channel, then the bias; columns: R, G, B (in the decoder's [-1, 1])."""
    decoder = VaeDecoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor).eval()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(FIT_SAMPLES, spec.latent_channels, FIT_LATENT_SIZE, FIT_LATENT_SIZE, generator=generator,
                          dtype=pipe.vae.dtype)
    with torch.inference_mode():
        decoded = decoder(latents).float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(decoded, FIT_LATENT_SIZE)
    inputs = latents.float().permute(0, 2, 3, 1).reshape(-1, spec.latent_channels)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)
    targets = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, targets).solution
    return tuple(tuple(float(v) for v in row) for row in solution.tolist())
