"""tiny-animatediff (AnimateDiffPipeline) and tiny-svd (StableVideoDiffusionPipeline)."""

from __future__ import annotations

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from dgate.tiny.components import SEED, build_vae, clip_text_encoder, sd_unet
from dgate.tiny.tokenizers import build_clip_tokenizer


def build_animatediff() -> AnimateDiffPipeline:
    """SD 1.5 + a motion adapter (UNetMotionModel, up to 32 frames), AnimateDiff's DDIM schedule."""
    tokenizer = build_clip_tokenizer()
    text_encoder = clip_text_encoder(tokenizer)
    unet = sd_unet(layers_per_block=1)  # one layer per block: every frame runs through it
    motion_adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
                                   motion_num_attention_heads=4, motion_max_seq_length=32)
    # AnimateDiff's documented schedule: SD's betas, linear, DDIM without sample clipping.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                              timestep_spacing="linspace", steps_offset=1)
    return AnimateDiffPipeline(vae=build_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=motion_adapter, scheduler=scheduler, feature_extractor=None,
                               image_encoder=None)


def build_svd() -> StableVideoDiffusionPipeline:
    """Stable Video Diffusion's layout: a CLIP image encoder (224 px, as the pipeline resizes to), the
    spatio-temporal UNet (8 input channels: noise + image latents; fps, motion bucket and noise
    augmentation as added time ids), a temporal VAE decoder, SVD's continuous-time Karras Euler."""
    torch.manual_seed(SEED)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))
    torch.manual_seed(SEED)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=32,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(4, 8),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        num_frames=8,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                                       latent_channels=4)
    # SVD-XT's scheduler config.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_max=700.0,
        sigma_min=0.002, steps_offset=1, timestep_spacing="leading", timestep_type="continuous")
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224, do_normalize=True,
                                           image_mean=[0.48145466, 0.4578275, 0.40821073],
                                           image_std=[0.26862954, 0.26130258, 0.27577711])
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=feature_extractor)
