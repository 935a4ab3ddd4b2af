"""Seeded components shared by several families: the VAE, text encoders, SD's UNet and scheduler."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

SEED = 0


def build_vae(
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    quant_convs: bool = True,
) -> AutoencoderKL:
    # Two levels -> a VAE scale factor of 2. SD 1.x/SDXL: 4 latent channels and quant convs; SD3 and
    # Flux: 16 channels, a shift as well as a scale, and no quant convs.
    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
    )


def clip_text_encoder(
    tokenizer: CLIPTokenizer, seed: int = SEED, projection_dim: int | None = None, hidden_act: str = "quick_gelu"
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 32-wide CLIP text encoder; with `projection_dim` the pooled output is projected (text_embeds)."""
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        hidden_act=hidden_act,  # quick_gelu: OpenAI's CLIP-L; gelu: OpenCLIP's bigG (SDXL's/SD3's second)
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # CLIP pools the hidden state at the first eos
        pad_token_id=tokenizer.pad_token_id,
        **extra,  # type: ignore[arg-type]  # projection_dim, when given
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config) if projection_dim is None else CLIPTextModelWithProjection(config)


def t5_encoder(tokenizer: T5Tokenizer, d_model: int = 32, seed: int = SEED) -> T5EncoderModel:
    """A 2-layer T5 v1.1 encoder (gated-gelu, as T5-XXL in PixArt, SD3 and Flux) of width `d_model`."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]  # a T5Config kwarg its stub omits
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def sd_euler_scheduler() -> EulerDiscreteScheduler:
    # SD 1.5's and SDXL base 1.0's noise schedule (SDXL ships exactly this Euler config).
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )


def sd_unet(layers_per_block: int, in_channels: int = 4) -> UNet2DConditionModel:
    """SD 1.5's UNet layout at 32/64 channels (seeded); 9 input channels: SD 1.5-inpainting's."""
    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        # diffusers' fast-test layout: cross-attention only at the 16x16 level, because self-attention
        # over a 32x32 latent (SD's order) makes each step ~4x slower on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,  # diffusers' (misnamed) head count, as in SD 1.5
    )
