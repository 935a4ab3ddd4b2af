"""PixArt-Alpha/Sigma: a T5 encoder whose mask the DiT also reads, learned sigma, discrete schedulers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.families.base import Family, TextOutputs, call_defaults, per_image, t5_encoder
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import DENOISER_TEXT_LENGTH, TensorSpec


class PixArtWrapper(nn.Module):
    """The prompt mask becomes an attention bias inside the model."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            sample,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep.reshape(-1),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]


class PixArt(Family):
    name = "pixart"
    pipeline_classes = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
    denoiser_component = "transformer"

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        length = call_defaults(pipe)["max_sequence_length"]
        return (t5_encoder(pipe, "", max_length=length, takes_attention_mask=True),)

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        return vae_scale_factor * pipe.transformer.config.patch_size

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        width = spec.text_encoders[0].hidden_size
        return (
            self.sample_tensor(spec),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (-1, width), (DENOISER_TEXT_LENGTH,)),
            TensorSpec("encoder_attention_mask", "TYPE_INT64", (-1,), (DENOISER_TEXT_LENGTH,)),
        )

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return PixArtWrapper(pipe.transformer)

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        t5 = text["text_encoder"]
        return {"encoder_hidden_states": per_image(t5["hidden_states"], params.num_images, cfg),
                "encoder_attention_mask": per_image(t5["attention_mask"], params.num_images, cfg)}
