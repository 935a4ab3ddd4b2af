"""The images and mask of an edit (or variation) upload -> `EditImages` at the request's size.

- Output size: the request's `size`, else the (first) image's own size scaled down (aspect kept) to
  fit the pipeline's largest size, snapped down to its `size_multiple` and clamped to its `min_size`.
- Each image is resized to the output size with Lanczos; the mask with nearest (it stays binary).
- The mask is OpenAI's: a PNG the size of the image whose transparent pixels (alpha < 128) are
  repainted; a mask without an alpha channel, or of another size than an image, is a 400.
- Every file is checked from its header (pixels) before it is decoded, one at a time, so at most one
  full-size upload is in memory beside the resized ones.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dgate.core.errors import InvalidRequestError
from dgate.core.limits import GenerationLimits
from dgate.frontend.engine import EditImages
from dgate.frontend.uploads import opened_image

MAX_EDIT_IMAGES = 16  # OpenAI's limit for gpt-image edits
EDIT_FILES = {"image": MAX_EDIT_IMAGES, "mask": 1}
VARIATION_FILES = {"image": 1}


def _name(index: int, count: int) -> str:
    return f"image {index + 1}" if count > 1 else "image"


def image_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone; InvalidRequestError (param image) for a bad file."""
    with opened_image(data, max_pixels=max_pixels, param="image") as image:
        return image.size


def fit_size(size: tuple[int, int], limits: GenerationLimits) -> tuple[int, int]:
    """The output size for an input image of `size` when the request gives none (module docstring)."""
    width, height = size
    scale = min(1.0, limits.max_width / width, limits.max_height / height)

    def snap(side: int, maximum: int) -> int:
        return min(maximum, max(limits.min_size, int(side * scale) // limits.size_multiple * limits.size_multiple))

    return snap(width, limits.max_width), snap(height, limits.max_height)


def edit_inputs(images: list[bytes], mask: bytes | None, size: tuple[int, int], *,
                max_pixels: int) -> tuple[EditImages, ...]:
    """Decoded, checked and resized to `size` (width, height). CPU-bound: run it in a thread."""
    arrays, sizes = [], []
    for index, data in enumerate(images):
        with opened_image(data, max_pixels=max_pixels, param="image", name=_name(index, len(images))) as image:
            sizes.append(image.size)
            rgb = image.convert("RGB")
            arrays.append(np.asarray(rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)))
    repaint = None if mask is None else _repaint(mask, sizes, size, max_pixels=max_pixels)
    return tuple(EditImages(image=array, mask=repaint) for array in arrays)


def _repaint(data: bytes, sizes: list[tuple[int, int]], size: tuple[int, int], *, max_pixels: int) -> np.ndarray:
    """OpenAI's mask -> EditImages' (uint8 [H, W]: 255 = repaint where the mask is transparent)."""
    with opened_image(data, max_pixels=max_pixels, param="mask") as image:
        if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
            raise InvalidRequestError(f"mask must have an alpha channel (transparent = repaint); this {image.format} "
                                      f"image is {image.mode} without transparency", "mask")
        for index, image_size in enumerate(sizes):
            if image.size != image_size:
                raise InvalidRequestError(
                    f"mask is {image.size[0]}x{image.size[1]} but {_name(index, len(sizes))} is "
                    f"{image_size[0]}x{image_size[1]}: they must be the same size", "mask")
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        return np.where(np.asarray(alpha) < 128, 255, 0).astype(np.uint8)
