"""tiny-sdxl: StableDiffusionXLPipeline (CLIP + projected CLIP, "text_time" UNet, 4-channel VAE, Euler)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

from dgate.tiny.components import SEED, build_vae, clip_text_encoder, sd_euler_scheduler
from dgate.tiny.tokenizers import build_clip_tokenizer


def build_sdxl() -> StableDiffusionXLPipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")  # OpenCLIP's tokenizer pads with "!" (id 0)
    # SDXL takes the penultimate hidden states of both encoders, concatenated (32 + 32), and the
    # second one's projected pooled output (32) for the added "text_time" embedding.
    text_encoder = clip_text_encoder(tokenizer, seed=SEED)
    text_encoder_2 = clip_text_encoder(tokenizer_2, seed=SEED + 1, projection_dim=32, hidden_act="gelu")
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(  # diffusers' SDXL fast-test UNet
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 size/crop conditioning numbers x addition_time_embed_dim + text_encoder_2's projection_dim
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=32 + 32,
    )
    return StableDiffusionXLPipeline(
        vae=build_vae(scaling_factor=0.13025),  # SDXL's VAE scale
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=sd_euler_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
