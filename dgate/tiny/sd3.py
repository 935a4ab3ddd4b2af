"""tiny-sd3: StableDiffusion3Pipeline (2 projected CLIPs + T5, MMDiT, 16-channel VAE, flow matching)."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from dgate.tiny.components import SEED, build_vae, clip_text_encoder, t5_encoder
from dgate.tiny.tokenizers import build_clip_tokenizer, build_t5_tokenizer


def build_sd3() -> StableDiffusion3Pipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    tokenizer_3 = build_t5_tokenizer()
    # Two projected CLIPs (pooled 32 + 32 = pooled_projection_dim) and a T5 whose width (64) is the
    # joint attention width: SD3 zero-pads the concatenated CLIP hidden states (32 + 32) up to it.
    text_encoder = clip_text_encoder(tokenizer, seed=SEED, projection_dim=32)
    text_encoder_2 = clip_text_encoder(tokenizer_2, seed=SEED + 1, projection_dim=32, hidden_act="gelu")
    text_encoder_3 = t5_encoder(tokenizer_3, d_model=64, seed=SEED + 2)
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32,  # the default 64x64 image
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # = T5 d_model
        caption_projection_dim=32,  # = heads * head_dim
        pooled_projection_dim=64,  # = 32 + 32
        pos_embed_max_size=96,  # patches per side: up to 384x384 images
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),  # SD3-medium's
        vae=build_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_convs=False),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
