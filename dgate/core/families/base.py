"""What every family adapter answers, and the behaviour most families share.

A family adapter is the one place that knows a diffusers pipeline class: how to derive its spec
from the checkpoint's configs, which tensors its denoiser model takes, how to wrap its modules for
export, and how one denoising step is fed (conditioning, timesteps, latents). Export, config
rendering and the denoiser model ask the adapter; nothing else branches on the family.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from dgate.core.capabilities import Capabilities
from dgate.core.edit import EditLatents, EncodedEdit
from dgate.core.images import to_uint8_images
from dgate.core.limits import GenerationLimits
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.schedulers import default_scheduler_name, scheduler_names, step_kwargs
from dgate.core.tensors import (
    DENOISER_TEXT_LENGTH,
    FRAMES,
    HEIGHT,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TEXT_LENGTH,
    WIDTH,
    TensorSpec,
)

DEFAULT_MAX_IMAGES = 10  # OpenAI's `n` limit
DEFAULT_MAX_STEPS = 100
DEFAULT_MAX_GUIDANCE = 50.0
# The longest T5 prompt served: StableDiffusion3Pipeline and FluxPipeline refuse more than 512 tokens.
MAX_T5_TOKENS = 512

# text encoder component -> its outputs for the [negative, prompt] rows: hidden_states, pooled, attention_mask
# (image-to-video: the image encoder's and VAE encoder's outputs, under their component names)
TextOutputs = dict[str, dict[str, np.ndarray]]
# A blocking call of another component model: (component, inputs) -> outputs (BLS in Triton, ORT or
# PyTorch in tests).
ComponentCall = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
# Classifier-free guidance: one scale, or one per frame (SVD's ramp), broadcast over the noise.
Guidance = float | torch.Tensor


def per_image(rows: np.ndarray, num_images: int, cfg: bool) -> np.ndarray:
    """[negative, prompt] rows -> [negative]*n + [prompt]*n (or [prompt]*n without guidance)."""
    rows = rows if cfg else rows[1:]
    return np.repeat(rows, num_images, axis=0)


def call_defaults(pipe: Any) -> dict[str, Any]:
    """The pipeline's `__call__` defaults (steps, guidance, max_sequence_length)."""
    return {key: p.default for key, p in inspect.signature(type(pipe).__call__).parameters.items()}


def clip_encoder(pipe: Any, index: str, *, hidden_layer: int, hidden: bool = True, pooled: bool = False
                 ) -> TextEncoderSpec:
    """A CLIP text encoder (fixed 77-token window) as a pipeline uses it."""
    encoder, tokenizer = getattr(pipe, f"text_encoder{index}"), getattr(pipe, f"tokenizer{index}")
    config = encoder.config
    pooled_size = getattr(config, "projection_dim", 0) if hasattr(encoder, "text_projection") else config.hidden_size
    return TextEncoderSpec(
        component=f"text_encoder{index}", tokenizer=f"tokenizer{index}", vocab_size=config.vocab_size,
        max_length=tokenizer.model_max_length, variable_length=False,
        hidden_size=config.hidden_size if hidden else 0, hidden_layer=hidden_layer,
        pooled_size=pooled_size if pooled else 0, takes_attention_mask=False,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_encoder(pipe: Any, index: str, *, max_length: int, takes_attention_mask: bool) -> TextEncoderSpec:
    """A T5 encoder: padded to the request's max_sequence_length."""
    encoder, tokenizer = getattr(pipe, f"text_encoder{index}"), getattr(pipe, f"tokenizer{index}")
    return TextEncoderSpec(
        component=f"text_encoder{index}", tokenizer=f"tokenizer{index}", vocab_size=encoder.config.vocab_size,
        max_length=max_length, variable_length=True, hidden_size=encoder.config.d_model, hidden_layer=-1,
        pooled_size=0, takes_attention_mask=takes_attention_mask, pad_token_id=tokenizer.pad_token_id,
    )


class Family:
    """Defaults fit a discrete-time, epsilon-style pipeline with classifier-free guidance."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    denoiser_component: ClassVar[str] = "unet"
    flow_matching: ClassVar[bool] = False
    scales_model_input: ClassVar[bool] = True  # discrete schedulers rescale the input per sigma
    true_cfg: ClassVar[bool] = False
    task: ClassVar[str] = "image"  # "image" | "text-to-video" | "image-to-video"
    vae_encoder_scaled: ClassVar[bool] = True  # the VAE encoder model returns scaled latents (img2img)
    # img2img and inpainting, where diffusers has the family's img2img and inpaint pipelines to match.
    supports_edits: ClassVar[bool] = False
    # The TorchScript exporter bakes some traced shapes into constants (Flux's rotary reshape); those
    # denoisers export with torch's dynamo exporter, which keeps the dynamic axes symbolic.
    dynamo_export: ClassVar[bool] = False

    # --- derivation from a loaded diffusers pipeline ---------------------------------------------
    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        raise NotImplementedError

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        """Pixels per step of the size grid the exported denoiser can take."""
        raise NotImplementedError

    def spec_facts(self, pipe: Any) -> dict[str, Any]:
        """Family facts stored in the spec (force_zeros_for_empty_prompt, guidance_embeds, patch_size)."""
        return {}

    def default_size(self, pipe: Any, vae_scale_factor: int) -> int:
        """The pipeline's own default height/width."""
        return int(getattr(pipe, self.denoiser_component).config.sample_size) * vae_scale_factor

    def latent_channels(self, pipe: Any) -> int:
        return int(getattr(pipe, self.denoiser_component).config.in_channels)

    def out_channels(self, pipe: Any) -> int:
        config = getattr(pipe, self.denoiser_component).config
        return int(config.out_channels or config.in_channels)

    def default_guidance_scale(self, defaults: dict[str, Any]) -> float:
        return float(defaults["guidance_scale"])

    def video_limits(self, pipe: Any, defaults: dict[str, Any]) -> dict[str, Any]:
        """Default/max frames and fps of a video family ({} for images)."""
        return {}

    def component_precision(self, pipe: Any, component: str, requested: str) -> str:
        """Per-component precision for a requested one: T5 overflows in FP16 (diffusers keeps it in
        FP32/BF16)."""
        if requested == "fp32":
            return "fp32"
        if component.startswith("text_encoder") and type(getattr(pipe, component)).__name__.startswith("T5"):
            return "fp32"
        return requested

    def derive_spec(self, pipe: Any, name: str, *, max_size: int | None = None, default_steps: int | None = None,
                    max_steps: int = DEFAULT_MAX_STEPS, precision: str = "fp32",
                    default_scheduler: str | None = None) -> PipelineSpec:
        vae = pipe.vae.config
        vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
        defaults = call_defaults(pipe)
        size_multiple = math.lcm(8, self.spatial_factor(pipe, vae_scale_factor))
        default_size = self.default_size(pipe, vae_scale_factor)
        max_size = max_size or 2 * default_size
        encoders = self.text_encoders(pipe)
        t5_length = max((e.max_length for e in encoders if e.variable_length), default=0)
        scheduler_config = dict(pipe.scheduler.config)
        schedulers = scheduler_names(self.flow_matching)
        default_scheduler = default_scheduler or default_scheduler_name(scheduler_config, self.flow_matching)
        if default_scheduler not in schedulers:
            raise ValueError(f"default scheduler {default_scheduler!r} is not one of {', '.join(schedulers)}")
        limits: dict[str, Any] = dict(
            family=self.name,
            default_width=default_size,
            default_height=default_size,
            min_size=max(size_multiple, default_size // 4 // size_multiple * size_multiple),
            max_width=max_size,
            max_height=max_size,
            size_multiple=size_multiple,
            default_steps=default_steps or defaults["num_inference_steps"],
            max_steps=max_steps,
            max_images=DEFAULT_MAX_IMAGES,
            default_guidance_scale=self.default_guidance_scale(defaults),
            max_guidance_scale=DEFAULT_MAX_GUIDANCE,
            default_scheduler=default_scheduler,
            schedulers=schedulers,
            default_max_sequence_length=t5_length,
            # Longer than the default is allowed (SD3: 256 by default), up to what the pipelines accept.
            max_sequence_length=max(t5_length, MAX_T5_TOKENS) if t5_length else 0,
            true_cfg=self.true_cfg,
        )
        limits |= self.video_limits(pipe, defaults)
        spec = PipelineSpec(
            name=name,
            pipeline_class=type(pipe).__name__,
            family=self.name,
            denoiser_component=self.denoiser_component,
            latent_channels=self.latent_channels(pipe),
            denoiser_out_channels=self.out_channels(pipe),
            vae_scale_factor=vae_scale_factor,
            vae_scaling_factor=float(vae.scaling_factor),
            vae_shift_factor=None if getattr(vae, "shift_factor", None) is None else float(vae.shift_factor),
            text_encoders=encoders,
            limits=GenerationLimits(**limits),
            capabilities=Capabilities(task=self.task, edits=self.supports_edits,
                                      precision=self.component_precision(pipe, self.denoiser_component, precision)),
            **self.spec_facts(pipe),
        )
        return replace(spec, precisions={c: self.component_precision(pipe, c, precision)
                                         for c in spec.exported_components})

    # --- tensors ----------------------------------------------------------------------------------
    def sample_tensor(self, spec: PipelineSpec) -> TensorSpec:
        return TensorSpec("sample", "TYPE_FP32", (spec.latent_channels, -1, -1), (LATENT_HEIGHT, LATENT_WIDTH))

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def denoiser_outputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        return (TensorSpec("noise_pred", "TYPE_FP32", (spec.denoiser_out_channels, -1, -1),
                           (LATENT_HEIGHT, LATENT_WIDTH)),)

    def component_io(self, spec: PipelineSpec, component: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) of an exported component: text_encoder*, unet|transformer, vae_*."""
        latent = TensorSpec("latent", "TYPE_FP32", (spec.latent_channels, -1, -1), (LATENT_HEIGHT, LATENT_WIDTH))
        image = TensorSpec("image", "TYPE_FP32", (3, -1, -1), (HEIGHT, WIDTH))
        if component == spec.denoiser_component:
            return self.denoiser_inputs(spec), self.denoiser_outputs(spec)
        if component == "vae_decoder":
            decoder_in, decoder_out = self.decoder_io(spec)
            return (decoder_in,), (decoder_out,)
        if component == "vae_encoder":  # the latent distribution's mode and standard deviation
            return (image,), (latent, replace(latent, name="latent_std"))
        if component == "image_encoder":
            size = spec.image_encoder_size
            return ((TensorSpec("pixel_values", "TYPE_FP32", (3, size, size)),),
                    (TensorSpec("image_embeds", "TYPE_FP32", (spec.image_embed_dim,)),))
        encoder = spec.text_encoder(component)
        return encoder.inputs, encoder.outputs

    def decoder_io(self, spec: PipelineSpec) -> tuple[TensorSpec, TensorSpec]:
        """The VAE decoder's input and output: one latent image per row (a video's frames are rows)."""
        return (TensorSpec("latent", "TYPE_FP32", (spec.latent_channels, -1, -1), (LATENT_HEIGHT, LATENT_WIDTH)),
                TensorSpec("image", "TYPE_FP32", (3, -1, -1), (HEIGHT, WIDTH)))

    def denoiser_text_length(self, spec: PipelineSpec, t5_length: int) -> int:
        """Prompt tokens the denoiser model sees when T5 is padded to `t5_length`."""
        return t5_length

    def axis_sizes(self, spec: PipelineSpec, height: int, width: int, t5_length: int | None = None,
                   frames: int | None = None) -> dict[str, int]:
        """Concrete sizes of every named dynamic axis for an image (or `frames` frames) of height x width."""
        t5_length = t5_length or spec.limits.default_max_sequence_length
        scale = spec.vae_scale_factor
        return {HEIGHT: height, WIDTH: width, LATENT_HEIGHT: height // scale, LATENT_WIDTH: width // scale,
                TEXT_LENGTH: t5_length, DENOISER_TEXT_LENGTH: self.denoiser_text_length(spec, t5_length),
                FRAMES: frames or spec.limits.default_num_frames}

    # --- export -----------------------------------------------------------------------------------
    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        """The UNet/transformer wrapped to take exactly `denoiser_inputs` and return `noise_pred`."""
        raise NotImplementedError

    def decoder_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module | None:
        """A family's own VAE decoder wrapper (SVD's temporal decoder); None: the 2-D one."""
        return None

    def image_encoder_module(self, pipe: Any) -> nn.Module:
        raise NotImplementedError(f"{self.name} has no image encoder")

    # --- one request's denoising --------------------------------------------------------------------
    def cfg_scale(self, params: DenoiseParams) -> Guidance | None:
        """The classifier-free guidance scale, or None when the request runs without it."""
        # diffusers: do_classifier_free_guidance = guidance_scale > 1
        return params.guidance_scale if params.guidance_scale > 1.0 else None

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        """The denoiser model inputs that stay the same for every step, one row per model row."""
        raise NotImplementedError

    def set_timesteps(self, scheduler: Any, spec: PipelineSpec, params: DenoiseParams) -> None:
        scheduler.set_timesteps(params.num_inference_steps)

    def initial_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any,
                        generator: torch.Generator) -> torch.Tensor:
        shape = spec.latent_shape(params.num_images, params.height, params.width)
        latents = randn_tensor(shape, generator=generator, dtype=torch.float32)
        return latents * scheduler.init_noise_sigma if self.scales_model_input else latents

    # --- edits (img2img, inpainting) ----------------------------------------------------------------
    def edit_start(self, params: DenoiseParams) -> int:
        """The first step an edit runs (img2img/inpaint `get_timesteps`: int(steps * strength) run)."""
        steps = params.num_inference_steps
        return max(steps - min(int(steps * params.strength), steps), 0)

    def edit_timesteps(self, scheduler: Any, params: DenoiseParams) -> torch.Tensor:
        """The timesteps an edit runs, after set_timesteps; the scheduler starts at the first of them."""
        from dgate.core.errors import InvalidRequestError

        start = self.edit_start(params) * scheduler.order
        timesteps = scheduler.timesteps[start:]
        if len(timesteps) < 1:
            raise InvalidRequestError(f"strength {params.strength} with {params.num_inference_steps} steps runs no "
                                      "step: raise either", "strength")
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return timesteps

    def add_noise(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`latents` noised to timestep `t` (discrete schedulers' add_noise)."""
        return scheduler.add_noise(latents, noise, t)

    def edit_from_noise(self, edit: Any, params: DenoiseParams) -> bool:
        """Whether the edit starts from the noise alone: the inpaint pipelines' `is_strength_max`
        (strength 1 with a mask); img2img always noises the image's latents."""
        return edit.mask is not None and params.strength == 1.0

    def edit_noise(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any, generator: torch.Generator,
                   image_latents: torch.Tensor | None, from_noise: bool, timesteps: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(initial latents, noise): the noise's draw, then the image's latents noised to the first
        timestep, or the noise alone (scaled by init_noise_sigma) when the edit starts from it."""
        noise = randn_tensor(spec.latent_shape(params.num_images, params.height, params.width), generator=generator,
                             dtype=torch.float32)
        if from_noise:
            return (noise * scheduler.init_noise_sigma if self.scales_model_input else noise), noise
        if image_latents is None:
            raise ValueError("an edit that does not start from noise needs the image's latents")
        return self.add_noise(scheduler, image_latents, noise, timesteps[:1].repeat(params.num_images)), noise

    def edit_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any, generator: torch.Generator,
                     edit: EncodedEdit, timesteps: torch.Tensor) -> EditLatents:
        """The edit's initial state, drawn in the pipelines' order: the image's latent sample, the
        noise, then (inpainting) the masked image's sample, which a 4/16-channel denoiser does not
        take (its pipelines draw it all the same); the mask at latent size for the per-step blend."""
        image_latents = edit.image.sample(generator).repeat(params.num_images, 1, 1, 1)
        latents, noise = self.edit_noise(spec, params, scheduler, generator, image_latents,
                                         self.edit_from_noise(edit, params), timesteps)
        if edit.mask is None or edit.masked_image is None:
            return EditLatents(latents, noise, image_latents)
        edit.masked_image.sample(generator)
        keep = 1 - torch.nn.functional.interpolate(edit.mask, size=latents.shape[-2:])
        return EditLatents(latents, noise, image_latents, keep=keep)

    def timestep_input(self, t: torch.Tensor, rows: int) -> np.ndarray:
        return np.full((rows, 1), float(t), dtype=np.float32)

    def step_kwargs(self, scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
        return step_kwargs(scheduler, generator)

    # --- conditioning that needs other models, and decoding (video) -------------------------------
    def encode_conditioning(self, spec: PipelineSpec, params: DenoiseParams, image: np.ndarray | None,
                            generator: torch.Generator, call: ComponentCall) -> TextOutputs:
        """Conditioning computed before the loop from the request's image (image-to-video), drawing
        from the request's generator in the pipeline's order; {} for text-conditioned families."""
        return {}

    def decode_chunks(self, spec: PipelineSpec, latents: np.ndarray, params: DenoiseParams
                      ) -> list[np.ndarray]:
        """The VAE decoder's inputs, chunk by chunk (bounded memory): the frames of a video."""
        raise NotImplementedError(f"{self.name} decodes images in the ensemble")

    def frames_from_decoded(self, decoded: list[np.ndarray]) -> np.ndarray:
        """The VAE decoder's outputs, chunk by chunk ([f, 3, H, W] each) -> uint8 frames [1, F, H, W, 3]."""
        return to_uint8_images(np.concatenate(decoded))[None]
