"""Full-size random-weight pipelines: the real architectures, built offline, for export and benchmarks.

The tiny pipelines (`dgate.tiny`) check that everything works; these check how fast it is. They have
the published configs of the real checkpoints (so the same FLOPs, memory and ONNX/TensorRT graphs) but
seeded random weights instead of the trained ones, so nothing is downloaded; the images are noise.

- `full-sd15`: Stable Diffusion 1.5 (UNet 859.5M, CLIP ViT-L/14 text encoder 123.1M, VAE 83.7M
  parameters): ~4.3 GB in float32. Built by default (`dgate tiny --full-size`).
- `full-sdxl`: SDXL base 1.0 (UNet 2567.5M, CLIP ViT-L/14 123.1M, OpenCLIP ViT-bigG/14 with its
  projection 694.7M, VAE 83.7M): ~13.9 GB in float32. Built by name only.

Not provided, because it does not fit this kind of machine: `full-flux` (FLUX.1-dev), whose
FluxTransformer2DModel alone has ~11.9B parameters (47.6 GB in float32): patch_size 1, in_channels 64,
num_layers 19, num_single_layers 38, attention_head_dim 128, num_attention_heads 24 (inner width 3072),
joint_attention_dim 4096, pooled_projection_dim 768, guidance_embeds True, axes_dims_rope (16, 56, 56);
plus a T5-XXL v1.1 encoder (d_model 4096, d_ff 10240, d_kv 64, 64 heads, 24 layers, vocab 32128,
gated-gelu: ~4.76B), CLIP ViT-L/14 (123.1M) and a 16-channel VAE (83.8M, scaling_factor 0.3611,
shift_factor 0.1159, no quant convs): ~16.9B parameters, ~67 GB in float32.

Tokenizers: the tiny offline CLIP tokenizer (`dgate.tiny.build_clip_tokenizer`, ~1.1k tokens) instead
of CLIP's 49408-token BPE. A text encoder only needs every id it is given to be below its vocab_size
(49408 here, as published), so the embedding tables keep their real size and the prompts still
tokenize into the same 77-token windows; the text encoders' bos/eos/pad ids are set to that tokenizer's.

Weights use each library's default initialisation under a fixed seed (per component), in float32,
so two builds are identical. Components are materialised and saved one at a time, so the peak memory
is the largest component (SDXL's UNet: ~10.3 GB), not the whole pipeline.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dgate.tiny import _write_bpe_files, build_clip_tokenizer

logger = logging.getLogger(__name__)

FULL_SIZE_PIPELINES: tuple[str, ...] = ("full-sd15", "full-sdxl")
DEFAULT_FULL_SIZE_PIPELINES: tuple[str, ...] = ("full-sd15",)  # what `dgate tiny --full-size` builds

SEED = 0

# --- Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5) ------------------------------

# unet/config.json
SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# vae/config.json
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json: OpenAI CLIP ViT-L/14's text tower (bos/eos/pad ids come from the tokenizer).
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "projection_dim": 768,
}

# scheduler/scheduler_config.json: SD 1.5 ships PNDM (PLMS) over the scaled-linear betas.
SD15_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# --- SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0) ---------------------------------------

# unet/config.json
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,  # 768 (CLIP-L) + 1280 (bigG) penultimate hidden states
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 time ids + 1280 pooled bigG
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# vae/config.json (the SDXL VAE: SD's layout, another scale, fp16 overflows so it upcasts)
SDXL_VAE: dict[str, Any] = {**SD15_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}

# text_encoder/config.json: CLIP ViT-L/14 again.
SDXL_CLIP_L_TEXT: dict[str, Any] = dict(CLIP_L_TEXT)

# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower, with its text projection.
OPENCLIP_BIGG_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "projection_dim": 1280,
}

# scheduler/scheduler_config.json (the PNDM/DDIM-only keys of the published file dropped: Euler rejects them)
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def _clip_text_config(published: dict[str, Any], tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    if len(tokenizer) > published["vocab_size"]:
        raise ValueError("the tokenizer has ids beyond the text encoder's vocabulary")
    return CLIPTextConfig(
        **published,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # CLIP pools at the first eos
        pad_token_id=tokenizer.pad_token_id,
    )


def _spec(name: str) -> tuple[type[Any], dict[str, Callable[[], Any]], dict[str, Any]]:
    """(pipeline class, model factories by component name, the other pipeline arguments)."""
    if name == "full-sd15":
        tokenizer = build_clip_tokenizer()
        models: dict[str, Callable[[], Any]] = {
            "text_encoder": lambda: CLIPTextModel(_clip_text_config(CLIP_L_TEXT, tokenizer)),
            "unet": lambda: UNet2DConditionModel(**SD15_UNET),
            "vae": lambda: AutoencoderKL(**SD15_VAE),
        }
        others = {
            "tokenizer": tokenizer,
            "scheduler": PNDMScheduler(**SD15_SCHEDULER),
            "safety_checker": None,  # the real one is a 304M CLIP vision tower; serving does not use it
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        return StableDiffusionPipeline, models, others
    if name == "full-sdxl":
        tokenizer = build_clip_tokenizer()
        tokenizer_2 = build_clip_tokenizer(pad_token="!")  # OpenCLIP's pads with "!"
        models = {
            "text_encoder": lambda: CLIPTextModel(_clip_text_config(SDXL_CLIP_L_TEXT, tokenizer)),
            "text_encoder_2": lambda: CLIPTextModelWithProjection(_clip_text_config(OPENCLIP_BIGG_TEXT, tokenizer_2)),
            "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
            "vae": lambda: AutoencoderKL(**SDXL_VAE),
        }
        others = {
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER),
            "force_zeros_for_empty_prompt": True,
            "add_watermarker": False,
        }
        return StableDiffusionXLPipeline, models, others
    raise ValueError(f"unknown full-size pipeline {name!r}; expected one of {', '.join(FULL_SIZE_PIPELINES)}")


def build_on_meta(name: str) -> Any:  # a DiffusionPipeline (diffusers' own annotations are loose)
    """The pipeline `name` with every model on the meta device: configs and shapes, no weights."""
    pipeline_class, models, others = _spec(name)
    with torch.device("meta"):
        modules = {component: factory() for component, factory in models.items()}
    return pipeline_class(**modules, **others)


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters per model component of `name`, counted on the meta device (nothing is allocated)."""
    pipe = build_on_meta(name)
    return {
        component: sum(p.numel() for p in module.parameters())
        for component, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def build_full_size_pipeline(name: str, out_dir: Path) -> Path:
    """Build the full-size pipeline `name` with random weights, save it to `out_dir / name`, return that path.

    Loads back with `DiffusionPipeline.from_pretrained(path)`. The models are materialised one at a
    time (float32, seed SEED + their index) and saved as safetensors, sharded where over 10 GB.
    """
    pipeline_class, models, others = _spec(name)
    path = Path(out_dir) / name
    if path.exists():
        shutil.rmtree(path)  # no stale shards from an earlier build
    path.mkdir(parents=True)
    # model_index.json exactly as `save_pretrained` writes it, from a weightless copy of the pipeline.
    build_on_meta(name).save_config(path)
    for component, value in others.items():
        if isinstance(value, CLIPTokenizer):
            value.save_pretrained(path / component)
            _write_bpe_files(value, path / component)
        elif component == "scheduler":
            value.save_pretrained(path / component)
    with torch.random.fork_rng(devices=[]):  # neither depends on nor disturbs the caller's RNG
        progress = tqdm(models.items(), desc=name, unit="model")
        for index, (component, factory) in enumerate(progress):
            progress.set_postfix_str(component)
            torch.manual_seed(SEED + index)
            module = factory()
            if any(p.dtype != torch.float32 for p in module.parameters()):
                raise RuntimeError(f"{name}/{component}: built in {torch.get_default_dtype()}, not float32")
            count = sum(p.numel() for p in module.parameters())
            logger.info("%s: %s %s, %.1fM parameters", name, component, type(module).__name__, count / 1e6)
            module.save_pretrained(path / component)
            del module
    logger.info("built %s at %s", name, path)
    return path
