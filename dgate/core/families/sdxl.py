"""SDXL: two CLIP encoders (penultimate states concatenated), pooled embeds and size micro-conditioning."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.families.base import TextOutputs, clip_encoder, per_image
from dgate.core.families.sd import StableDiffusion
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import TensorSpec

TIME_IDS = 6  # original size (h, w) + crop top-left (y, x) + target size (h, w)


class SDXLUNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep.reshape(-1), encoder_hidden_states, added_cond_kwargs=added,
                         return_dict=False)[0]


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        # diffusers' encode_prompt: hidden_states[-2] of each, the pooled output of the last one only.
        return (clip_encoder(pipe, "", hidden_layer=-2), clip_encoder(pipe, "_2", hidden_layer=-2, pooled=True))

    def component_precision(self, pipe: Any, component: str, requested: str) -> str:
        # StableDiffusionXLPipeline upcasts the VAE when its config says force_upcast: the SDXL VAE
        # overflows in FP16 (the fp16-fix VAE sets it False).
        if component.startswith("vae") and getattr(pipe.vae.config, "force_upcast", False):
            return "fp32"
        return super().component_precision(pipe, component, requested)

    def spec_facts(self, pipe: Any) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": bool(pipe.config.force_zeros_for_empty_prompt)}

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        return (
            *super().denoiser_inputs(spec),
            TensorSpec("text_embeds", "TYPE_FP32", (spec.text_encoders[-1].pooled_size,)),
            TensorSpec("time_ids", "TYPE_FP32", (TIME_IDS,)),
        )

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return SDXLUNetWrapper(pipe.unet)

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        hidden = np.concatenate([text[e.component]["hidden_states"] for e in spec.text_encoders], axis=-1)
        pooled = text[spec.text_encoders[-1].component]["pooled"].copy()
        if spec.force_zeros_for_empty_prompt and not params.negative_prompt:
            hidden[0], pooled[0] = 0.0, 0.0  # diffusers: zeros_like when negative_prompt is None
        # Original size = target size = the requested size, no crop: diffusers' defaults.
        time_ids = np.array([[params.height, params.width, 0, 0, params.height, params.width]], dtype=np.float32)
        rows = per_image(hidden, params.num_images, cfg)
        return {"encoder_hidden_states": rows, "text_embeds": per_image(pooled, params.num_images, cfg),
                "time_ids": np.repeat(time_ids, len(rows), axis=0)}
