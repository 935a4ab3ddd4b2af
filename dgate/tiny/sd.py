"""tiny-sd (StableDiffusionPipeline) and tiny-sd-inpaint (its 9-channel inpainting UNet)."""

from __future__ import annotations

from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

from dgate.tiny.components import build_vae, clip_text_encoder, sd_euler_scheduler, sd_unet
from dgate.tiny.tokenizers import build_clip_tokenizer


def build_sd() -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer()
    text_encoder = clip_text_encoder(tokenizer)
    unet = sd_unet(layers_per_block=2)
    # SD 1.5's noise schedule, with the Euler sampler most deployments use.
    return StableDiffusionPipeline(
        vae=build_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_euler_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd_inpaint() -> StableDiffusionInpaintPipeline:
    """SD 1.5-inpainting's layout: the UNet takes the latents, the mask and the masked image's latents
    (4 + 1 + 4 channels) and predicts the latents' noise."""
    tokenizer = build_clip_tokenizer()
    return StableDiffusionInpaintPipeline(
        vae=build_vae(),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(layers_per_block=2, in_channels=9),
        scheduler=sd_euler_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
