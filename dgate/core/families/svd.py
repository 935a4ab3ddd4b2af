"""Stable Video Diffusion: image to video.

The conditioning image goes two ways, as in `StableVideoDiffusionPipeline`: resized to 224 px with
diffusers' own anti-aliasing into the CLIP image encoder (its embedding is the UNet's only
cross-attention token), and resized to the video size, noised by `noise_aug_strength` (the request
generator's first draw) and encoded by the VAE (the mode, unscaled) into latents concatenated to
every frame's noise. `fps - 1`, `motion_bucket_id` and `noise_aug_strength` are the added time ids.
Guidance ramps linearly over the frames from 1 to `guidance_scale` (the pipeline's
`max_guidance_scale`; `min_guidance_scale` is its default 1). Latents are [n, F, C, h, w]; the
temporal VAE decoder mixes the frames of one chunk, so `decode_chunk_size` changes the result
(diffusers' default: every frame in one chunk).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from PIL import Image
from torch import nn

from dgate.core.families.base import ComponentCall, Family, Guidance, TextOutputs
from dgate.core.images import to_uint8_images
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.tensors import FRAMES, HEIGHT, LATENT_HEIGHT, LATENT_WIDTH, WIDTH, TensorSpec

MIN_GUIDANCE_SCALE = 1.0  # StableVideoDiffusionPipeline's min_guidance_scale default
TIME_IDS = 3  # fps - 1, motion_bucket_id, noise_aug_strength


class SpatioTemporalUNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
        # The pipeline concatenates the image latents to the scaled noise over channels, every step.
        model_input = torch.cat([sample, image_latents], dim=2)
        return self.unet(model_input, timestep.reshape(-1), encoder_hidden_states, added_time_ids,
                         return_dict=False)[0]


class TemporalVaeDecoderWrapper(nn.Module):
    """[videos, F, C, h, w] -> [videos, F, 3, H, W]: the frames of a row are one temporal chunk."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae: Any = vae  # AutoencoderKLTemporalDecoder: decode is not an nn.Module attribute
        self.scaling_factor = scaling_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        videos, frames = latent.shape[0], latent.shape[1]
        decoded = self.vae.decode(latent.flatten(0, 1) / self.scaling_factor, num_frames=frames).sample
        return decoded.reshape(videos, frames, *decoded.shape[1:])


class ImageEncoderWrapper(nn.Module):
    """CLIP vision with projection; takes [0, 1] pixels at its size and normalizes as the pipeline's
    feature extractor does (`do_normalize` with its mean and std)."""

    def __init__(self, image_encoder: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder((pixel_values - self.mean) / self.std).image_embeds


class StableVideoDiffusion(Family):
    name = "svd"
    pipeline_classes = ("StableVideoDiffusionPipeline",)
    task = "image-to-video"
    vae_encoder_scaled = False  # _encode_vae_image: latent_dist.mode(), no scaling factor

    def text_encoders(self, pipe: Any) -> tuple[TextEncoderSpec, ...]:
        return ()

    def spatial_factor(self, pipe: Any, vae_scale_factor: int) -> int:
        return vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    def latent_channels(self, pipe: Any) -> int:
        return int(pipe.unet.config.in_channels) // 2  # noise + image latents

    def out_channels(self, pipe: Any) -> int:
        return int(pipe.unet.config.out_channels)

    def spec_facts(self, pipe: Any) -> dict[str, Any]:
        vision = pipe.image_encoder.config
        return {"image_encoder_size": int(vision.image_size), "image_embed_dim": int(vision.projection_dim)}

    def default_guidance_scale(self, defaults: dict[str, Any]) -> float:
        return float(defaults["max_guidance_scale"])

    def video_limits(self, pipe: Any, defaults: dict[str, Any]) -> dict[str, Any]:
        frames = int(pipe.unet.config.num_frames)
        return {"default_num_frames": frames, "max_num_frames": max(2 * frames, 32),
                "default_fps": int(defaults["fps"]), "schedulers": ("default",), "default_scheduler": "default"}

    def component_precision(self, pipe: Any, component: str, requested: str) -> str:
        return requested

    # --- tensors ----------------------------------------------------------------------------------
    def _frames(self, name: str, channels: int) -> TensorSpec:
        return TensorSpec(name, "TYPE_FP32", (-1, channels, -1, -1), (FRAMES, LATENT_HEIGHT, LATENT_WIDTH))

    def sample_tensor(self, spec: PipelineSpec) -> TensorSpec:
        return self._frames("sample", spec.latent_channels)

    def denoiser_inputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        return (
            self.sample_tensor(spec),
            TensorSpec("timestep", "TYPE_FP32", (1,)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (1, spec.image_embed_dim)),
            TensorSpec("added_time_ids", "TYPE_FP32", (TIME_IDS,)),
            self._frames("image_latents", spec.latent_channels),
        )

    def denoiser_outputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        return (self._frames("noise_pred", spec.denoiser_out_channels),)

    def decoder_io(self, spec: PipelineSpec) -> tuple[TensorSpec, TensorSpec]:
        return (self._frames("latent", spec.latent_channels),
                TensorSpec("image", "TYPE_FP32", (-1, 3, -1, -1), (FRAMES, HEIGHT, WIDTH)))

    # --- export -----------------------------------------------------------------------------------
    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return SpatioTemporalUNetWrapper(pipe.unet)

    def decoder_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return TemporalVaeDecoderWrapper(pipe.vae, spec.vae_scaling_factor)

    def image_encoder_module(self, pipe: Any) -> nn.Module:
        extractor = pipe.feature_extractor
        return ImageEncoderWrapper(pipe.image_encoder, list(extractor.image_mean), list(extractor.image_std))

    # --- one request --------------------------------------------------------------------------------
    def encode_conditioning(self, spec: PipelineSpec, params: DenoiseParams, image: np.ndarray | None,
                            generator: torch.Generator, call: ComponentCall) -> TextOutputs:
        if image is None:
            raise ValueError(f"{spec.name} generates video from an image: the request has none")
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        processor = VideoProcessor(do_resize=True, vae_scale_factor=spec.vae_scale_factor)
        # _encode_image: normalize, resize with anti-aliasing, unnormalize (the original implementation's order).
        pixels = processor.numpy_to_pt(processor.pil_to_numpy(picture)) * 2.0 - 1.0
        size = spec.image_encoder_size
        pixels = (_resize_with_antialiasing(pixels, (size, size)) + 1.0) / 2.0
        embeds = call("image_encoder", {"pixel_values": pixels.numpy()})["image_embeds"]
        # The VAE sees the image at the video's size, with noise: the generator's first draw.
        frame = processor.preprocess(picture, height=params.height, width=params.width)
        frame = frame + params.noise_aug_strength * randn_tensor(frame.shape, generator=generator, dtype=frame.dtype)
        latent = call("vae_encoder", {"image": frame.numpy()})["latent"]
        return {"image_encoder": {"image_embeds": embeds}, "vae_encoder": {"latent": latent}}

    def cfg_scale(self, params: DenoiseParams) -> Guidance | None:
        if params.guidance_scale <= 1.0:  # do_classifier_free_guidance: max_guidance_scale > 1
            return None
        ramp = torch.linspace(MIN_GUIDANCE_SCALE, params.guidance_scale, params.num_frames).unsqueeze(0)
        return ramp[:, :, None, None, None]  # _append_dims to the latents' 5 dims

    def conditioning(self, spec: PipelineSpec, text: TextOutputs, params: DenoiseParams, cfg: bool
                     ) -> dict[str, np.ndarray]:
        embeds = text["image_encoder"]["image_embeds"][:, None].astype(np.float32)  # [1, 1, D]
        latents = np.repeat(text["vae_encoder"]["latent"][:, None], params.num_frames, axis=1)  # [1, F, C, h, w]
        time_ids = np.array([[params.fps - 1, params.motion_bucket_id, params.noise_aug_strength]], dtype=np.float32)
        if cfg:  # unconditional rows: zero embedding, zero image latents, the same time ids
            embeds = np.concatenate([np.zeros_like(embeds), embeds])
            latents = np.concatenate([np.zeros_like(latents), latents])
            time_ids = np.concatenate([time_ids, time_ids])
        return {"encoder_hidden_states": embeds, "added_time_ids": time_ids,
                "image_latents": np.ascontiguousarray(latents, dtype=np.float32)}

    def initial_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any,
                        generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = spec.latent_shape(params.num_images, params.height, params.width)
        latents = randn_tensor((n, params.num_frames, c, h, w), generator=generator, dtype=torch.float32)
        return latents * scheduler.init_noise_sigma

    def step_kwargs(self, scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
        return {}  # the pipeline calls scheduler.step(noise_pred, t, latents)

    def decode_chunks(self, spec: PipelineSpec, latents: np.ndarray, params: DenoiseParams) -> list[np.ndarray]:
        chunk = params.decode_chunk_size or params.num_frames
        return [np.ascontiguousarray(latents[:, i: i + chunk]) for i in range(0, latents.shape[1], chunk)]

    def frames_from_decoded(self, decoded: list[np.ndarray]) -> np.ndarray:
        frames = np.concatenate(decoded, axis=1)  # [1, F, 3, H, W]
        return to_uint8_images(frames[0])[None]
