"""Stable Diffusion 3: two CLIPs + T5 into a joint-attention (MMDiT) transformer, flow matching, CFG."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.families.base import TextOutputs, call_defaults, clip_encoder, per_image, t5_encoder
from dgate.core.families.flow import FlowMatchingFamily
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import DENOISER_TEXT_LENGTH, TensorSpec


class SD3TransformerWrapper(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=sample, timestep=timestep.reshape(-1),
                                encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections,
                                return_dict=False)[0]


class StableDiffusion3(FlowMatchingFamily):
    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    supports_edits = True
    denoiser_component = "transformer"
    default_max_shift = 1.16

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        if pipe.text_encoder_3 is None:
            raise ValueError("StableDiffusion3Pipeline without its T5 encoder (text_encoder_3) is not supported")
        length = call_defaults(pipe)["max_sequence_length"]
        return (clip_encoder(pipe, "", hidden_layer=-2, pooled=True),
                clip_encoder(pipe, "_2", hidden_layer=-2, pooled=True),
                t5_encoder(pipe, "_3", max_length=length, takes_attention_mask=False))

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        return vae_scale_factor * pipe.transformer.config.patch_size

    def spec_facts(self, pipe: Any) -> dict[str, Any]:
        return {"patch_size": int(pipe.transformer.config.patch_size)}

    def denoiser_text_length(self, spec: PipelineSpec, t5_length: int) -> int:
        return spec.text_encoders[0].max_length + t5_length  # CLIP tokens, then T5 tokens

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        clip_l, clip_g, t5 = spec.text_encoders
        return (
            self.sample_tensor(spec),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (-1, t5.hidden_size), (DENOISER_TEXT_LENGTH,)),
            TensorSpec("pooled_projections", "TYPE_FP32", (clip_l.pooled_size + clip_g.pooled_size,)),
        )

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return SD3TransformerWrapper(pipe.transformer)

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        clip_l, clip_g, t5 = (text[e.component] for e in spec.text_encoders)
        clip_states = torch.from_numpy(np.concatenate([clip_l["hidden_states"], clip_g["hidden_states"]], axis=-1))
        t5_hidden = t5["hidden_states"]
        # diffusers pads the CLIP states with zeros to T5's width (F.pad also crops if narrower).
        clip = torch.nn.functional.pad(clip_states, (0, t5_hidden.shape[-1] - clip_states.shape[-1])).numpy()
        hidden = np.concatenate([clip, t5_hidden], axis=-2)
        pooled = np.concatenate([clip_l["pooled"], clip_g["pooled"]], axis=-1)
        return {"encoder_hidden_states": per_image(hidden, params.num_images, cfg),
                "pooled_projections": per_image(pooled, params.num_images, cfg)}
