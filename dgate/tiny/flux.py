"""tiny-flux (FLUX.1-dev style: CLIP pooled + T5, guidance-embedded transformer, 16-channel VAE, flow
matching with resolution-dependent shift) and tiny-flux-schnell (no guidance embedding, no shift)."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from dgate.tiny.components import SEED, build_vae, clip_text_encoder, t5_encoder
from dgate.tiny.tokenizers import build_clip_tokenizer, build_t5_tokenizer


def build_flux(schnell: bool = False) -> FluxPipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    text_encoder = clip_text_encoder(tokenizer, seed=SEED)  # Flux uses its pooled output only
    text_encoder_2 = t5_encoder(tokenizer_2, d_model=32, seed=SEED + 2)
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=32,  # = CLIP hidden size
        guidance_embeds=not schnell,  # dev is guidance-distilled; schnell is timestep-distilled
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    # FLUX.1-dev's scheduler shifts with the image size; FLUX.1-schnell's does not shift at all.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0 if schnell else 3.0,
        use_dynamic_shifting=not schnell,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=build_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant_convs=False),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_flux_schnell() -> FluxPipeline:
    return build_flux(schnell=True)
