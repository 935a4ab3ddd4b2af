"""Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet, discrete-time schedulers with CFG."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.families.base import Family, TextOutputs, clip_encoder, per_image
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import TensorSpec


class UNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
                ) -> torch.Tensor:
        return self.unet(sample, timestep.reshape(-1), encoder_hidden_states, return_dict=False)[0]


class StableDiffusion(Family):
    name = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    supports_edits = True

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        return (clip_encoder(pipe, "", hidden_layer=-1),)

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        # The traced ONNX UNet cannot forward odd upsample sizes, so latents must divide by every
        # downsampling stage (diffusers handles that case with a Python branch).
        return vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    def prompt_width(self, spec: PipelineSpec) -> int:
        return sum(e.hidden_size for e in spec.text_encoders)

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        length = spec.text_encoders[0].max_length
        return (
            self.sample_tensor(spec),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (length, self.prompt_width(spec))),
        )

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return UNetWrapper(pipe.unet)

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        return {"encoder_hidden_states": per_image(text["text_encoder"]["hidden_states"], params.num_images, cfg)}
