"""The denoising loop, with the denoiser network call left to the caller.

`denoise_steps` is a generator: it yields the model inputs of each step and is sent the model's
`noise_pred` back, so the caller owns the network call and everything between steps (the BLS call
in Triton, PyTorch in the tests, and per-step previews or cancellation later) while the arithmetic
stays in one place. The arithmetic follows the diffusers pipelines step for step (same
`randn_tensor` call, timesteps, CFG order, learned-sigma split, step kwargs), so the same seed gives
the same image as diffusers; what differs per family comes from its adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np
import torch

from dgate.core.families import family_of
from dgate.core.families.base import TextOutputs
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory, step_kwargs

ModelInputs = dict[str, np.ndarray]
Predict = Callable[[ModelInputs], np.ndarray]
Steps = Generator[ModelInputs, np.ndarray, np.ndarray]


class DenoiseCancelled(RuntimeError):
    """The client went away; stop spending compute on it."""


def denoise_steps(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs
                  ) -> Steps:
    """Yield each step's denoiser model inputs, receive its noise_pred; return the final latents
    [n, C, h, w] (float32, unpacked, before the VAE's scaling)."""
    family = family_of(spec)
    generator = torch.Generator("cpu").manual_seed(params.seed)
    scheduler = schedulers(params.scheduler)
    family.set_timesteps(scheduler, spec, params)
    latents = family.initial_latents(spec, params, scheduler, generator)
    extra = step_kwargs(scheduler, generator)
    cfg = family.cfg_scale(params)
    inputs = family.conditioning(spec, text, params, cfg is not None)

    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if cfg is not None else latents
        if family.scales_model_input:
            model_input = scheduler.scale_model_input(model_input, t)
        inputs["sample"] = model_input.numpy()
        inputs["timestep"] = family.timestep_input(t, model_input.shape[0])
        noise_pred = torch.from_numpy((yield inputs))
        if spec.denoiser_out_channels == 2 * spec.latent_channels:
            noise_pred = noise_pred[:, : spec.latent_channels]  # learned sigma: keep the mean
        if cfg is not None:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + cfg * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
    return latents.numpy().astype(np.float32, copy=False)


def denoise(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
            predict: Predict, is_cancelled: Callable[[], bool] = lambda: False) -> np.ndarray:
    """Run the loop with a blocking model call."""
    steps = denoise_steps(spec, params, schedulers, text)
    try:
        inputs = next(steps)
        while True:
            if is_cancelled():
                raise DenoiseCancelled("request cancelled")
            inputs = steps.send(predict(inputs))
    except StopIteration as done:
        return done.value

