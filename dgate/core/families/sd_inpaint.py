"""Stable Diffusion inpainting models (SD 1.5/2 inpainting): a UNet that takes 9 channels.

StableDiffusionInpaintPipeline with such a UNet feeds it, every step, the (scaled) latents, the mask
at latent size and the masked image's latents, concatenated along the channels, and does not blend
the kept area back as it does for a 4-channel UNet. The latents stay the VAE's 4 channels
(`spec.latent_channels`); only the denoiser's `sample` input is wider. These models make nothing
without a mask (no text to image, no img2img), so `capabilities.inpaint_model` says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from dgate.core.edit import EditLatents, EncodedEdit
from dgate.core.errors import InvalidRequestError
from dgate.core.families.sd import StableDiffusion
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import LATENT_HEIGHT, LATENT_WIDTH, TensorSpec


def inpaint_channels(latent_channels: int) -> int:
    """The UNet's input channels: latents, the mask, the masked image's latents."""
    return 2 * latent_channels + 1


class StableDiffusionInpaint(StableDiffusion):
    name = "sd-inpaint"
    pipeline_classes = ("StableDiffusionInpaintPipeline",)
    supports_edits = True

    def latent_channels(self, pipe: Any) -> int:
        return int(pipe.vae.config.latent_channels)

    def derive_spec(self, pipe: Any, name: str, **options: Any) -> PipelineSpec:
        latent, unet = int(pipe.vae.config.latent_channels), int(pipe.unet.config.in_channels)
        if unet != inpaint_channels(latent):
            raise ValueError(
                f"StableDiffusionInpaintPipeline with a {unet}-channel UNet: an inpainting model takes "
                f"{inpaint_channels(latent)} (latents, mask, masked image); a {latent}-channel UNet is a text-to-image "
                "one: export it as a StableDiffusionPipeline (it inpaints too)")
        spec = super().derive_spec(pipe, name, **options)
        return replace(spec, capabilities=replace(spec.capabilities, inpaint_model=True))

    def sample_tensor(self, spec: PipelineSpec) -> TensorSpec:
        return TensorSpec("sample", "TYPE_FP32", (inpaint_channels(spec.latent_channels), -1, -1),
                          (LATENT_HEIGHT, LATENT_WIDTH))

    def initial_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any,
                        generator: torch.Generator) -> torch.Tensor:
        raise InvalidRequestError(f"{spec.name} is an inpainting model: send an image and a mask", "image")

    def edit_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any, generator: torch.Generator,
                     edit: EncodedEdit, timesteps: torch.Tensor) -> EditLatents:
        if edit.mask is None or edit.masked_image is None:
            raise InvalidRequestError(f"{spec.name} is an inpainting model: send a mask with the image", "mask")
        n = params.num_images
        from_noise = self.edit_from_noise(edit, params)
        # The pipeline samples the image's latents only to noise them (strength < 1): a 9-channel UNet
        # needs them for nothing else, so at full strength that draw does not happen.
        image_latents = None if from_noise else edit.image.sample(generator).repeat(n, 1, 1, 1)
        latents, noise = self.edit_noise(spec, params, scheduler, generator, image_latents, from_noise, timesteps)
        masked = edit.masked_image.sample(generator).repeat(n, 1, 1, 1)
        mask = torch.nn.functional.interpolate(edit.mask, size=latents.shape[-2:]).repeat(n, 1, 1, 1)
        return EditLatents(latents, noise, image_latents, channels=torch.cat([mask, masked], dim=1))
