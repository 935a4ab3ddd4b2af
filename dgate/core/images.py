"""Decoded VAE output -> 8-bit RGB, the same arithmetic as diffusers' VaeImageProcessor."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_uint8_images(decoded: Any) -> np.ndarray:
    """[N, 3, H, W] float in [-1, 1] -> [N, H, W, 3] uint8 (denormalize, clamp, *255, round).

    A torch tensor is converted where it lives (a GPU: only the uint8 image crosses to the host),
    with the same float32 operations as the numpy path, so both give the same bytes."""
    if not isinstance(decoded, np.ndarray):
        import torch  # only where tensors arrive: the frontend imports this module without torch

        images = (decoded.float() / 2 + 0.5).clamp(0.0, 1.0)
        return (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    images = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    return (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
