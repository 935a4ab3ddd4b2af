"""Partial images: what a request's latents look like part way, drawn cheaply (no VAE decode).

The latents go through the pipeline's linear latent -> RGB map (`PipelineSpec.preview_rgb`, fitted
to its VAE at export) and are scaled up to the request's size by repetition. Colours and coarse
shapes show how the image converges; detail only comes with the final decode.
"""

from __future__ import annotations

import numpy as np
import torch

from dgate.core.images import to_uint8_images
from dgate.core.pipeline_spec import PipelineSpec


def preview_steps(total: int, count: int) -> tuple[int, ...]:
    """After which steps (1-based) to send `count` partial images: evenly spaced, before the last step."""
    if count <= 0 or total < 2:
        return ()
    steps = sorted({min(total - 1, max(1, round(total * (i + 1) / (count + 1)))) for i in range(count)})
    return tuple(steps)


def preview_images(spec: PipelineSpec, latents: torch.Tensor) -> np.ndarray:
    """uint8 [n, H, W, 3] from the loop's latents [n, C, h, w]."""
    channels_last = latents.float().cpu().numpy().transpose(0, 2, 3, 1)
    if spec.preview_rgb:
        factors = np.asarray(spec.preview_rgb, dtype=np.float32)
        rgb = channels_last @ factors[:-1] + factors[-1]
    else:  # no fitted map (an older export): gray from the channel mean
        rgb = np.repeat(channels_last.mean(axis=-1, keepdims=True), 3, axis=-1)
    scale = spec.vae_scale_factor
    rgb = rgb.repeat(scale, axis=1).repeat(scale, axis=2)
    return to_uint8_images(rgb.transpose(0, 3, 1, 2))
