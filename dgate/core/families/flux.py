"""Flux: CLIP pooled + T5, 2x2-packed latents with position ids, flow matching with a resolution shift.

Guidance-distilled ("dev") checkpoints take guidance_scale as a model input; "schnell" ones take none.
No CFG by default; `true_cfg_scale` > 1 with a negative prompt runs it, as diffusers' FluxPipeline does.
Latents stay unpacked at the model's interface (the wrapper packs them): the scheduler step and the
guidance blend are elementwise, so the arithmetic is the same as on diffusers' packed tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.families.base import TextOutputs, call_defaults, clip_encoder, per_image, t5_encoder
from dgate.core.families.flow import FlowMatchingFamily
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import DENOISER_TEXT_LENGTH, IMAGE_TOKENS, TensorSpec

PACK = 2  # latents are packed into 2x2 patches


def latent_image_ids(latent_height: int, latent_width: int) -> np.ndarray:
    """diffusers' FluxPipeline._prepare_latent_image_ids: (0, row, column) per packed patch, float32."""
    rows, cols = latent_height // PACK, latent_width // PACK
    ids = np.zeros((rows, cols, 3), dtype=np.float32)
    ids[..., 1] = np.arange(rows, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(cols, dtype=np.float32)[None, :]
    return ids.reshape(rows * cols, 3)


class FluxTransformerWrapper(nn.Module):
    def __init__(self, transformer: nn.Module, guidance_embeds: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance_embeds = guidance_embeds

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, img_ids: torch.Tensor, guidance: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, c, h, w = sample.shape
        packed = sample.view(b, c, h // PACK, PACK, w // PACK, PACK).permute(0, 2, 4, 1, 3, 5)
        packed = packed.reshape(b, (h // PACK) * (w // PACK), c * PACK * PACK)
        txt_ids = encoder_hidden_states[0, :, :3] * 0  # zeros; shaped from the input so the length stays dynamic
        out = self.transformer(
            hidden_states=packed, timestep=timestep.reshape(-1),
            guidance=guidance.reshape(-1) if self.guidance_embeds and guidance is not None else None,
            pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
            txt_ids=txt_ids, img_ids=img_ids[0], return_dict=False,
        )[0]
        out = out.view(b, h // PACK, w // PACK, c, PACK, PACK).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, h, w)


class Flux(FlowMatchingFamily):
    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    supports_edits = True
    denoiser_component = "transformer"
    default_max_shift = 1.15
    true_cfg = True
    dynamo_export = True  # TorchScript bakes the image-token count into apply_rotary_emb's reshape

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        length = call_defaults(pipe)["max_sequence_length"]
        return (clip_encoder(pipe, "", hidden_layer=-1, hidden=False, pooled=True),
                t5_encoder(pipe, "_2", max_length=length, takes_attention_mask=False))

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        return vae_scale_factor * PACK

    def default_size(self, pipe: Any, vae_scale_factor: int) -> int:
        return int(pipe.default_sample_size) * vae_scale_factor  # FluxPipeline: 128 latents (1024 px)

    def latent_channels(self, pipe: Any) -> int:
        return int(pipe.transformer.config.in_channels) // (PACK * PACK)

    def out_channels(self, pipe: Any) -> int:
        config = pipe.transformer.config
        return int(config.out_channels or config.in_channels) // (PACK * PACK)

    def spec_facts(self, pipe: Any) -> dict[str, Any]:
        return {"guidance_embeds": bool(pipe.transformer.config.guidance_embeds), "patch_size": PACK}

    def axis_sizes(self, spec: PipelineSpec, height: int, width: int, t5_length: int | None = None,
                   frames: int | None = None) -> dict[str, int]:
        sizes = super().axis_sizes(spec, height, width, t5_length, frames)
        factor = spec.vae_scale_factor * PACK
        return sizes | {IMAGE_TOKENS: (height // factor) * (width // factor)}

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        clip, t5 = spec.text_encoders
        tensors = (
            self.sample_tensor(spec),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (-1, t5.hidden_size), (DENOISER_TEXT_LENGTH,)),
            TensorSpec("pooled_projections", "TYPE_FP32", (clip.pooled_size,)),
            TensorSpec("img_ids", "TYPE_FP32", (-1, 3), (IMAGE_TOKENS,)),
        )
        return (*tensors, TensorSpec("guidance", "TYPE_FP32", (1,))) if spec.guidance_embeds else tensors

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return FluxTransformerWrapper(pipe.transformer, spec.guidance_embeds)

    def cfg_scale(self, params: DenoiseParams) -> float | None:
        # FluxPipeline: do_true_cfg = true_cfg_scale > 1 and a negative prompt was given.
        return params.true_cfg_scale if params.true_cfg_scale > 1.0 and params.negative_prompt else None

    def sigmas(self, scheduler: Any, params: DenoiseParams) -> np.ndarray | None:
        if scheduler.config.get("use_flow_sigmas", False):
            return None  # the scheduler computes its own flow sigmas
        steps = params.num_inference_steps
        return np.linspace(1.0, 1 / steps, steps)

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        clip, t5 = (text[e.component] for e in spec.text_encoders)
        inputs = {"encoder_hidden_states": per_image(t5["hidden_states"], params.num_images, cfg),
                  "pooled_projections": per_image(clip["pooled"], params.num_images, cfg)}
        rows = len(inputs["pooled_projections"])
        _, _, height, width = spec.latent_shape(1, params.height, params.width)
        ids = latent_image_ids(height, width)
        inputs["img_ids"] = np.broadcast_to(ids, (rows, *ids.shape)).copy()
        if spec.guidance_embeds:
            inputs["guidance"] = np.full((rows, 1), params.guidance_scale, dtype=np.float32)
        return inputs

    def edit_from_noise(self, edit: Any, params: DenoiseParams) -> bool:
        # FluxInpaintPipeline has no `is_strength_max`: it always scale_noise()s the image's latents
        # to the first timestep (sigma 1 at full strength, which leaves the noise).
        return False

    def timestep_input(self, t: torch.Tensor, rows: int) -> np.ndarray:
        # FluxPipeline feeds timestep / 1000 (float32 division, as here).
        return np.full((rows, 1), np.float32(float(t)) / np.float32(1000), dtype=np.float32)
