"""torch modules that give each pipeline component the tensor names and signature of the spec.

Each wrapper's forward takes the spec's inputs in order and returns its single output, so the
ONNX graph, the TensorRT engine and the Triton config all share the names in PipelineSpec.
"""

from __future__ import annotations

import torch
from torch import nn

from dgate.core.pipeline_spec import PipelineSpec


class TextEncoderWrapper(nn.Module):
    def __init__(self, text_encoder: nn.Module, uses_attention_mask: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.uses_attention_mask = uses_attention_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # SD's CLIP runs without the mask (diffusers passes attention_mask=None); T5 needs it.
        mask = attention_mask if self.uses_attention_mask else None
        return self.text_encoder(input_ids, attention_mask=mask)[0]


class UNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep.reshape(-1), encoder_hidden_states, return_dict=False)[0]


class TransformerWrapper(nn.Module):
    """PixArt-style DiT: the prompt mask becomes an attention bias inside the model."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.transformer(
            sample,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            timestep=timestep.reshape(-1),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]


class VaeDecoderWrapper(nn.Module):
    """Takes the denoiser's latents as they are; the scaling factor lives here, from the VAE config."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float | None) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor or 0.0

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling_factor + self.shift_factor, return_dict=False)[0]


class VaeEncoderWrapper(nn.Module):
    """Image in [-1, 1] -> scaled latent (the distribution's mode), ready for img2img noising."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float | None) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor or 0.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        latent = self.vae.encode(image, return_dict=False)[0].mode()
        return (latent - self.shift_factor) * self.scaling_factor


def component_module(pipe: object, spec: PipelineSpec, component: str) -> nn.Module:
    """The wrapper for one exported component of a loaded diffusers pipeline, in eval mode."""
    if component == "text_encoder":
        module: nn.Module = TextEncoderWrapper(pipe.text_encoder, spec.uses_attention_mask)
    elif component == "unet":
        module = UNetWrapper(pipe.unet)
    elif component == "transformer":
        module = TransformerWrapper(pipe.transformer)
    elif component == "vae_decoder":
        module = VaeDecoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor)
    elif component == "vae_encoder":
        module = VaeEncoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor)
    else:
        raise KeyError(f"unknown component {component!r}")
    return module.eval()
