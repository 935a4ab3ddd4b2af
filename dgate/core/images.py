"""Decoded VAE output -> 8-bit RGB, the same arithmetic as diffusers' VaeImageProcessor."""

from __future__ import annotations

import numpy as np


def to_uint8_images(decoded: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] float in [-1, 1] -> [N, H, W, 3] uint8 (denormalize, clamp, *255, round)."""
    images = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    return (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
