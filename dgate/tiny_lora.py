"""Random-weight LoRA adapters for the tiny pipelines (tests, `dgate bench lora`), built offline.

peft makes the layers (`LoraConfig` with random A and B) on the pipeline's own modules, so the keys
and shapes are what a trained adapter of that pipeline has. Two layouts:
- "peft": diffusers' own (`<component>.<layer>.lora_A.weight`, peft config in the metadata), as
  `save_lora_weights` writes it;
- "kohya": sd-scripts' names (`lora_unet_<layer>`, `lora_te_`/`lora_te1_`/`lora_te2_`, `.lora_down`,
  `.lora_up`, `.alpha`), UNet pipelines only.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DENOISER_TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
                    "transformer": ["to_q", "to_k", "to_v", "to_out.0"]}
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]



def _adapter_layers(module: Any, targets: Sequence[str], rank: int, alpha: int, seed: int, magnitude: float
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    torch.manual_seed(seed)
    model = inject_adapter_in_model(config, copy.deepcopy(module))  # the pipeline's module stays clean
    state = {k: v.detach().clone() * magnitude for k, v in get_peft_model_state_dict(model).items()}
    return state, config.to_dict()


def random_lora(model_dir: Path, out: Path, *, seed: int = 0, rank: int = 4, alpha: int = 8,
                layout: str = "peft", text_encoder: bool = False, magnitude: float = 0.5) -> Path:
    """Write a random adapter for the pipeline at `model_dir` to `out` (a .safetensors file);
    `magnitude` scales peft's random factors (the tiny DiTs need more to change their images)."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
    # The CLIP text encoders (T5s are left alone: adapters rarely train them).
    clips = [name for name in ("text_encoder", "text_encoder_2")
             if "clip" in type(getattr(pipe, name, None)).__name__.lower()]
    components = [denoiser, *(clips if text_encoder else [])]
    # sd-scripts: lora_te for SD's one CLIP, lora_te1 / lora_te2 for SDXL's two.
    kohya_prefixes = {"unet": "lora_unet"} | (
        {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"} if len(clips) == 2 else {"text_encoder": "lora_te"})
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    for index, component in enumerate(components):
        targets = DENOISER_TARGETS[component] if component == denoiser else TEXT_ENCODER_TARGETS
        state, config = _adapter_layers(getattr(pipe, component), targets, rank, alpha, seed + index, magnitude)
        if layout == "peft":
            tensors |= {f"{component}.{k}": v.contiguous() for k, v in state.items()}
            metadata |= {f"{component}.{k}": v for k, v in config.items()}
        elif layout == "kohya" and denoiser == "unet":
            prefix = kohya_prefixes[component]
            for key, value in state.items():
                layer, kind = key.rsplit(".lora_", 1)
                name = f"{prefix}_" + layer.replace(".", "_")
                tensors[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
                tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        else:
            raise ValueError(f"layout {layout!r} is not written for {type(pipe).__name__}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    header = {"format": "pt"} | ({"lora_adapter_metadata": json.dumps(metadata, default=list)} if metadata else {})
    save_file(tensors, str(partial), metadata=header)
    os.replace(partial, out)
    return out
