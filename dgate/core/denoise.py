"""The denoising loop, with the denoiser network call passed in.

Inside Triton `predict` is a BLS call to the UNet/transformer model; in the benchmark and tests it
can be an ONNX Runtime session. The arithmetic follows diffusers' StableDiffusionPipeline and
PixArtSigmaPipeline step for step, so the same seed gives the same image as diffusers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory, step_kwargs

Predict = Callable[[dict[str, np.ndarray]], np.ndarray]


class DenoiseCancelled(RuntimeError):
    """The client went away; stop spending compute on it."""


def _per_image(rows: np.ndarray, num_images: int, guidance: bool) -> np.ndarray:
    """[uncond, cond] text rows -> [uncond]*n + [cond]*n (or [cond]*n without guidance)."""
    rows = rows if guidance else rows[1:]
    return np.repeat(rows, num_images, axis=0)


def denoise(
    spec: PipelineSpec,
    params: DenoiseParams,
    schedulers: SchedulerFactory,
    prompt_embeds: np.ndarray,
    prompt_attention_mask: np.ndarray | None,
    predict: Predict,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> np.ndarray:
    """Run the scheduler loop and return the final latents [n, C, h, w] (float32).

    `prompt_embeds` holds two rows, the negative (unconditional) prompt first, as produced by the
    tokenize -> text_encoder models.
    """
    generator = torch.Generator("cpu").manual_seed(params.seed)
    scheduler = schedulers(params.scheduler)
    scheduler.set_timesteps(params.num_inference_steps)
    shape = spec.latent_shape(params.num_images, params.height, params.width)
    latents = randn_tensor(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma
    extra = step_kwargs(scheduler, generator)

    guidance = params.uses_guidance
    inputs = {"encoder_hidden_states": _per_image(prompt_embeds, params.num_images, guidance)}
    if spec.uses_attention_mask:
        assert prompt_attention_mask is not None
        inputs["encoder_attention_mask"] = _per_image(prompt_attention_mask, params.num_images, guidance)

    for t in scheduler.timesteps:
        if is_cancelled():
            raise DenoiseCancelled("request cancelled")
        model_input = torch.cat([latents] * 2) if guidance else latents
        model_input = scheduler.scale_model_input(model_input, t)
        inputs["sample"] = model_input.numpy()
        inputs["timestep"] = np.full((model_input.shape[0], 1), float(t), dtype=np.float32)
        noise_pred = torch.from_numpy(predict(inputs))
        if spec.denoiser_out_channels == 2 * spec.latent_channels:
            noise_pred = noise_pred[:, : spec.latent_channels]  # learned sigma: keep the mean
        if guidance:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + params.guidance_scale * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
    return latents.numpy().astype(np.float32, copy=False)
