"""tiny-pixart: PixArtSigmaPipeline (T5, DiT, 4-channel VAE, DPM-Solver++)."""

from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

from dgate.tiny.components import SEED, build_vae, t5_encoder
from dgate.tiny.tokenizers import build_t5_tokenizer


def build_pixart() -> PixArtSigmaPipeline:
    tokenizer = build_t5_tokenizer()
    text_encoder = t5_encoder(tokenizer, d_model=32)
    torch.manual_seed(SEED)
    transformer = PixArtTransformer2DModel(
        sample_size=32,  # 128 would switch on PixArt-Alpha's resolution/aspect conditioning
        use_additional_conditions=False,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,  # = heads * head_dim
        caption_channels=32,  # = T5 d_model
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    # Like PixArt-Sigma's released scheduler: DPM-Solver++ (2M) over the linear DDPM betas.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=build_vae(),
        transformer=transformer,
        scheduler=scheduler,
    )
