"""An image edit's inputs as diffusers' img2img and inpaint pipelines prepare them.

The frontend sends the image (uint8, already at the request's size) and, for inpainting, a mask
(uint8, >= 128 = repaint). Here they become what the pipelines compute from them: the image in
[-1, 1] for the VAE encoder, the binarized mask, the masked image (the part to keep), and, once the
VAE encoder has answered, latents sampled from its distribution with the request's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor


@dataclass(frozen=True)
class EditSource:
    """The request's image, uint8 [H, W, 3], and optional mask, uint8 [H, W] (255 = repaint)."""

    image: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class VaeMoments:
    """The VAE encoder's latent distribution for one image, scaled as the denoiser's latents are."""

    mean: np.ndarray  # [1, C, h, w]
    std: np.ndarray

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """DiagonalGaussianDistribution.sample: one draw of the mean's shape from the generator."""
        mean = torch.from_numpy(self.mean)
        return mean + torch.from_numpy(self.std) * randn_tensor(mean.shape, generator=generator, dtype=mean.dtype)


@dataclass(frozen=True)
class EncodedEdit:
    """What the denoising loop needs from an edit: the image's latent distribution and, for
    inpainting, the pixel mask ([1, 1, H, W], 1 = repaint) and the masked image's distribution."""

    image: VaeMoments
    mask: torch.Tensor | None = None
    masked_image: VaeMoments | None = None


@dataclass(frozen=True)
class EditLatents:
    """An edit's state at the start of the loop, as the family's pipelines prepare it."""

    latents: torch.Tensor  # [n, C, h, w] the loop's initial latents
    noise: torch.Tensor  # [n, C, h, w] the noise drawn for them
    image_latents: torch.Tensor | None = None  # [n, C, h, w] the image's latent sample
    # Inpainting by blending (4/16-channel denoisers): 1 where the image is kept, [1, 1, h, w]; after
    # every step that area is reset to `image_latents` noised to the next timestep.
    keep: torch.Tensor | None = None
    # Inpainting models (9-channel UNets): [n, c, h, w] concatenated to the (scaled) sample every step.
    channels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> EditLatents:
        """Every tensor on `device` (drawn on the CPU generator, then moved once)."""
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return EditLatents(self.latents.to(device), self.noise.to(device), move(self.image_latents),
                           move(self.keep), move(self.channels))


def to_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [-1, 1] (VaeImageProcessor.preprocess)."""
    return (image.astype(np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1)[None]


def binarized_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> float32 [1, 1, H, W] of 0/1 (the inpaint pipelines' mask processor)."""
    return (mask.astype(np.float32) / 255.0 >= 0.5).astype(np.float32)[None, None]


def encoder_rows(source: EditSource) -> np.ndarray:
    """The VAE encoder's input: the image, then (inpainting) the image with the repaint area zeroed."""
    pixels = to_pixels(source.image)
    if source.mask is None:
        return pixels
    return np.concatenate([pixels, pixels * (binarized_mask(source.mask) < 0.5)])


def encoded_edit(source: EditSource, latent: np.ndarray, latent_std: np.ndarray) -> EncodedEdit:
    """The encoder's answer to `encoder_rows(source)` as the loop takes it."""
    image = VaeMoments(latent[:1], latent_std[:1])
    if source.mask is None:
        return EncodedEdit(image)
    return EncodedEdit(image, torch.from_numpy(binarized_mask(source.mask)), VaeMoments(latent[1:2], latent_std[1:2]))


def keep_unmasked(images: np.ndarray, source: EditSource) -> np.ndarray:
    """Inpainting results with the pixels outside the mask put back from the input, as diffusers'
    `VaeImageProcessor.apply_overlay` does with a binary mask: what the client did not mask comes
    back exactly (the VAE's round trip would otherwise alter it), as OpenAI's edits promise."""
    if source.mask is None:
        return images
    repaint = (source.mask >= 128)[None, :, :, None]
    return np.where(repaint, images, source.image[None]).astype(np.uint8)


def check_edit(source: EditSource, height: int, width: int) -> None:
    """The edit's arrays must be at the request's size (the frontend resizes them)."""
    from dgate.core.errors import InvalidRequestError

    if source.image.dtype != np.uint8 or source.image.shape != (height, width, 3):
        raise InvalidRequestError(f"image must be uint8 [{height}, {width}, 3] (the request's size), got "
                                  f"{source.image.dtype}{list(source.image.shape)}", "image")
    if source.mask is not None and (source.mask.dtype != np.uint8 or source.mask.shape != (height, width)):
        raise InvalidRequestError(f"mask must be uint8 [{height}, {width}] (the image's size), got "
                                  f"{source.mask.dtype}{list(source.mask.shape)}", "mask")
