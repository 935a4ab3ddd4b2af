"""AnimateDiff: Stable Diffusion's CLIP and UNet with motion modules (UNetMotionModel), text to video.

Latents are [n, C, F, h, w]. The loop is SD's (same scheduler kwargs, CFG order); the prompt rows
are repeated per frame inside the exported UNet wrapper, so every model input keeps the request's
rows as its batch dimension and Triton's batcher can merge requests. The VAE is SD's 2-D one: the
denoiser decodes the frames through it in chunks of `decode_chunk_size` rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from dgate.core.families.sd import StableDiffusion
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import FRAMES, LATENT_HEIGHT, LATENT_WIDTH, TensorSpec

DEFAULT_FPS = 8  # AnimateDiff's checkpoints were trained on 8 fps clips
DEFAULT_DECODE_CHUNK = 16  # AnimateDiffPipeline's decode_chunk_size


class MotionUNetWrapper(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
                ) -> torch.Tensor:
        # AnimateDiffPipeline: prompt_embeds.repeat_interleave(num_frames, dim=0) before the UNet.
        states = encoder_hidden_states.repeat_interleave(sample.shape[2], dim=0)
        return self.unet(sample, timestep.reshape(-1), states, return_dict=False)[0]


class AnimateDiff(StableDiffusion):
    name = "animatediff"
    pipeline_classes = ("AnimateDiffPipeline",)
    supports_edits = False  # video
    task = "text-to-video"

    def video_limits(self, pipe: Any, defaults: dict[str, Any]) -> dict[str, Any]:
        # The motion modules' positional table bounds the frames one window can take.
        max_frames = int(pipe.unet.config.motion_max_seq_length or 32)
        return {"default_num_frames": min(int(defaults["num_frames"] or 16), max_frames),
                "max_num_frames": max_frames, "default_fps": DEFAULT_FPS}

    def _frames(self, name: str, channels: int) -> TensorSpec:
        return TensorSpec(name, "TYPE_FP32", (channels, -1, -1, -1), (FRAMES, LATENT_HEIGHT, LATENT_WIDTH))

    def sample_tensor(self, spec: PipelineSpec) -> TensorSpec:
        return self._frames("sample", spec.latent_channels)

    def denoiser_outputs(self, spec: PipelineSpec) -> tuple[TensorSpec, ...]:
        return (self._frames("noise_pred", spec.denoiser_out_channels),)

    def denoiser_module(self, pipe: Any, spec: PipelineSpec) -> nn.Module:
        return MotionUNetWrapper(pipe.unet)

    def initial_latents(self, spec: PipelineSpec, params: DenoiseParams, scheduler: Any,
                        generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = spec.latent_shape(params.num_images, params.height, params.width)
        latents = randn_tensor((n, c, params.num_frames, h, w), generator=generator, dtype=torch.float32)
        return latents * scheduler.init_noise_sigma

    def decode_chunks(self, spec: PipelineSpec, latents: np.ndarray, params: DenoiseParams) -> list[np.ndarray]:
        # decode_latents: [1, C, F, h, w] -> [F, C, h, w] rows (the VAE scaling is in the decoder model).
        frames = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4).reshape(-1, latents.shape[1],
                                                                               *latents.shape[3:]))
        chunk = params.decode_chunk_size or DEFAULT_DECODE_CHUNK
        return [frames[i: i + chunk] for i in range(0, len(frames), chunk)]
