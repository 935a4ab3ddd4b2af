"""The description of a served pipeline: its family, shapes and the tensors of every component.

Written once from the diffusers pipeline's own configs at export time, saved as `pipeline.json`
next to the Triton models, and read back by the denoiser and tokenizer models. Export, config
rendering and the Triton adapters all derive tensor names and shapes from here.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dgate.core.limits import GenerationLimits
from dgate.core.tensors import TensorSpec

# diffusers pipeline class -> (family, denoiser component attribute)
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": ("unet", "unet"),
    "PixArtSigmaPipeline": ("dit", "transformer"),
    "PixArtAlphaPipeline": ("dit", "transformer"),
}
DEFAULT_MAX_IMAGES = 10  # OpenAI's `n` limit
DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_GUIDANCE = 50.0


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    pipeline_class: str
    family: str  # "unet" | "dit"
    denoiser_component: str  # "unet" | "transformer"
    latent_channels: int
    denoiser_out_channels: int  # 2 * latent_channels when the model learns sigma (PixArt)
    vae_scale_factor: int
    vae_scaling_factor: float
    vae_shift_factor: float | None
    text_max_length: int
    text_hidden_size: int
    uses_attention_mask: bool  # the text encoder and the denoiser model take the prompt mask (T5)
    limits: GenerationLimits

    # --- tensors of each component (batch dimension excluded) -----------------------------------
    @property
    def text_encoder_inputs(self) -> tuple[TensorSpec, ...]:
        ids = TensorSpec("input_ids", "TYPE_INT64", (self.text_max_length,))
        mask = TensorSpec("attention_mask", "TYPE_INT64", (self.text_max_length,))
        return (ids, mask) if self.uses_attention_mask else (ids,)

    @property
    def text_encoder_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("last_hidden_state", "TYPE_FP32", (self.text_max_length, self.text_hidden_size)),)

    @property
    def denoiser_model_inputs(self) -> tuple[TensorSpec, ...]:
        tensors = (
            TensorSpec("sample", "TYPE_FP32", (self.latent_channels, -1, -1)),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (self.text_max_length, self.text_hidden_size)),
        )
        if self.uses_attention_mask:
            tensors += (TensorSpec("encoder_attention_mask", "TYPE_INT64", (self.text_max_length,)),)
        return tensors

    @property
    def denoiser_model_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("noise_pred", "TYPE_FP32", (self.denoiser_out_channels, -1, -1)),)

    @property
    def vae_decoder_inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("latent", "TYPE_FP32", (self.latent_channels, -1, -1)),)

    @property
    def vae_decoder_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("image", "TYPE_FP32", (3, -1, -1)),)

    vae_encoder_inputs = vae_decoder_outputs
    vae_encoder_outputs = vae_decoder_inputs

    def component_io(self, component: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) of an exported component: text_encoder, unet|transformer, vae_*."""
        if component == "text_encoder":
            return self.text_encoder_inputs, self.text_encoder_outputs
        if component == self.denoiser_component:
            return self.denoiser_model_inputs, self.denoiser_model_outputs
        if component == "vae_decoder":
            return self.vae_decoder_inputs, self.vae_decoder_outputs
        if component == "vae_encoder":
            return self.vae_encoder_inputs, self.vae_encoder_outputs
        raise KeyError(f"unknown component {component!r}")

    @property
    def exported_components(self) -> tuple[str, ...]:
        return ("text_encoder", self.denoiser_component, "vae_decoder", "vae_encoder")

    def latent_shape(self, num_images: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (num_images, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    # --- persistence ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PipelineSpec:
        data = json.loads(text)
        data["limits"] = GenerationLimits(**data["limits"])
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> PipelineSpec:
        return cls.from_json(Path(path).read_text())

    # --- derivation from a loaded diffusers pipeline -------------------------------------------
    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        name: str,
        *,
        max_size: int | None = None,
        default_steps: int | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> PipelineSpec:
        pipeline_class = type(pipe).__name__
        if pipeline_class not in SUPPORTED_PIPELINES:
            raise ValueError(
                f"unsupported pipeline {pipeline_class}; supported: {', '.join(SUPPORTED_PIPELINES)}"
            )
        family, denoiser_attr = SUPPORTED_PIPELINES[pipeline_class]
        denoiser = getattr(pipe, denoiser_attr).config
        vae = pipe.vae.config
        vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
        call_defaults = {
            key: param.default for key, param in inspect.signature(type(pipe).__call__).parameters.items()
        }
        if family == "unet":
            # The traced ONNX UNet cannot forward odd upsample sizes, so latents must divide by
            # every downsampling stage (diffusers handles that case with a Python branch).
            spatial_factor = vae_scale_factor * 2 ** (len(denoiser.block_out_channels) - 1)
            text_max_length = pipe.tokenizer.model_max_length
            out_channels = denoiser.out_channels
        else:
            spatial_factor = vae_scale_factor * denoiser.patch_size
            text_max_length = call_defaults["max_sequence_length"]
            out_channels = denoiser.out_channels or denoiser.in_channels
        size_multiple = math.lcm(8, spatial_factor)
        default_size = denoiser.sample_size * vae_scale_factor
        max_size = max_size or 2 * default_size
        limits = GenerationLimits(
            default_width=default_size,
            default_height=default_size,
            min_size=max(size_multiple, default_size // 4 // size_multiple * size_multiple),
            max_width=max_size,
            max_height=max_size,
            size_multiple=size_multiple,
            default_steps=default_steps or call_defaults["num_inference_steps"],
            max_steps=max_steps,
            max_images=DEFAULT_MAX_IMAGES,
            default_guidance_scale=float(call_defaults["guidance_scale"]),
            max_guidance_scale=DEFAULT_MAX_GUIDANCE,
            default_scheduler="default",
        )
        return cls(
            name=name,
            pipeline_class=pipeline_class,
            family=family,
            denoiser_component=denoiser_attr,
            latent_channels=denoiser.in_channels,
            denoiser_out_channels=out_channels,
            vae_scale_factor=vae_scale_factor,
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=None if getattr(vae, "shift_factor", None) is None else float(vae.shift_factor),
            text_max_length=int(text_max_length),
            text_hidden_size=int(pipe.text_encoder.config.hidden_size if family == "unet"
                                 else pipe.text_encoder.config.d_model),
            uses_attention_mask=family == "dit",
            limits=limits,
        )
