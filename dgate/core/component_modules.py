"""torch modules that give each pipeline component the tensor names and signature of the spec.

Each wrapper's forward takes the component's inputs in order and returns its outputs in order, so
the ONNX graph, the TensorRT engine and the Triton config share the names the family adapter gives.
They live in the core because the torch engine serves them as they are (dgate.core.engines), and
export, calibration and the reference loops wrap the same way.
The denoiser (UNet/transformer) wrappers belong to the family adapters (`dgate.core.families`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dgate.core.families import family_of
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec


class TextEncoderWrapper(nn.Module):
    """CLIP or T5 as a pipeline's encode_prompt calls it: the hidden states it uses and/or the pooled output."""

    def __init__(self, text_encoder: nn.Module, spec: TextEncoderSpec) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.spec = spec

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        # SD/SDXL/SD3/Flux run CLIP and T5 without the mask (diffusers passes none); PixArt's T5 needs it.
        mask = attention_mask if self.spec.takes_attention_mask else None
        penultimate = self.spec.hidden_size > 0 and self.spec.hidden_layer != -1
        out = self.text_encoder(input_ids, attention_mask=mask, output_hidden_states=penultimate)
        outputs: tuple[torch.Tensor, ...] = ()
        if self.spec.hidden_size:
            # -1 is last_hidden_state (after CLIP's final layer norm), not hidden_states[-1].
            outputs += (out.hidden_states[self.spec.hidden_layer] if penultimate else out[0],)
        if self.spec.pooled_size:
            # CLIPTextModelWithProjection's text_embeds (SDXL, SD3); CLIPTextModel's pooler_output (Flux).
            outputs += (out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output,)
        return outputs


class VaeDecoderWrapper(nn.Module):
    """Takes the denoiser's latents as they are; the scaling factor lives here, from the VAE config."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float | None) -> None:
        super().__init__()
        self.vae: Any = vae  # an AutoencoderKL: encode/decode are not nn.Module attributes
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor or 0.0

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling_factor + self.shift_factor, return_dict=False)[0]


class VaeEncoderWrapper(nn.Module):
    """Image in [-1, 1] -> scaled latent (the distribution's mode), ready for img2img noising."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float | None) -> None:
        super().__init__()
        self.vae: Any = vae  # an AutoencoderKL: encode/decode are not nn.Module attributes
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor or 0.0

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Mode and std, not a sample: the sample is drawn from the request's generator outside (img2img).
        distribution = self.vae.encode(image, return_dict=False)[0]
        return (distribution.mode() - self.shift_factor) * self.scaling_factor, distribution.std * self.scaling_factor


def component_module(pipe: Any, spec: PipelineSpec, component: str) -> nn.Module:
    """The wrapper for one exported component of a loaded diffusers pipeline, in eval mode."""
    family = family_of(spec)
    if component == spec.denoiser_component:
        module: nn.Module = family.denoiser_module(pipe, spec)
    elif component == "vae_decoder":
        module = (family.decoder_module(pipe, spec)
                  or VaeDecoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor))
    elif component == "vae_encoder":
        if family.vae_encoder_scaled:
            module = VaeEncoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor)
        else:
            module = VaeEncoderWrapper(pipe.vae, 1.0, None)
    elif component == "image_encoder":
        module = family.image_encoder_module(pipe)
    else:
        module = TextEncoderWrapper(getattr(pipe, component), spec.text_encoder(component))
    return module.eval()
