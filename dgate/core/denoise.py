"""The denoising loop as a program (`dgate.core.program`) whose only call is the denoiser network.

`denoise_steps` yields each step's `(denoiser component, inputs)` and is sent the model's outputs
back, so the caller owns the network call (the BLS call in Triton, PyTorch in the tests) while the
arithmetic stays in one place; what happens between steps (progress, previews, cancellation) is the
`on_step` callback. The arithmetic follows the diffusers pipelines step for step (same
`randn_tensor` call, timesteps, CFG order, learned-sigma split, step kwargs), so the same seed gives
the same image as diffusers; what differs per family comes from its adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dgate.core.device import as_numpy, as_tensor
from dgate.core.edit import EncodedEdit
from dgate.core.errors import RequestCancelled
from dgate.core.families import family_of
from dgate.core.families.base import TextOutputs
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.program import Arrays, Program, run_blocking
from dgate.core.schedulers import SchedulerFactory


class DenoiseCancelled(RequestCancelled):
    """The client went away; stop spending compute on it."""


def request_generator(params: DenoiseParams) -> torch.Generator:
    """The request's one generator: every random draw of a request comes from it, in diffusers' order."""
    return torch.Generator("cpu").manual_seed(params.seed)


@dataclass(frozen=True)
class StepState:
    """Where a request's loop is after a step: `latents` as the scheduler left them (unpacked)."""

    done: int
    total: int
    latents: torch.Tensor


# Called after every step (progress, previews, cancellation: raise DenoiseCancelled to stop).
OnStep = Callable[[StepState], None]


def cancellable(is_cancelled: Callable[[], bool], on_step: OnStep | None = None) -> OnStep:
    """`on_step`, then a stop once the request is cancelled: DenoiseCancelled at once if it already is,
    else after any step but the last (whose work is done)."""
    if is_cancelled():
        raise DenoiseCancelled("request cancelled")

    def after_step(state: StepState) -> None:
        if on_step is not None:
            on_step(state)
        if state.done < state.total and is_cancelled():
            raise DenoiseCancelled("request cancelled")

    return after_step


def denoise_steps(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
                  generator: torch.Generator | None = None, *, edit: EncodedEdit | None = None,
                  on_step: OnStep | None = None, device: torch.device | str = "cpu") -> Program[torch.Tensor]:
    """Yield each step's denoiser call, receive its noise_pred; return the final latents
    [n, C, h, w] (video: [n, C, F, h, w] or [n, F, C, h, w], the family's layout; float32, unpacked,
    before the VAE's scaling) on `device`. `generator`: the request's, when conditioning already
    drew from it. Random draws stay on the CPU generator (diffusers' order and values) and move to
    `device` once; the conditioning moves there once per request, and every step's inputs, CFG and
    scheduler step stay there.

    `edit`: img2img from the image's latents noised to `params.strength` (the schedule starts part
    way), and with a mask, inpainting: after every step the area to keep is reset to the image's
    latents noised to the next timestep, as diffusers' inpaint pipelines do for a 4-channel UNet
    (16-channel transformer); an inpainting model (9-channel UNet) instead takes the mask and the
    masked image's latents as extra input channels every step. The family's `edit_latents` says which.
    """
    family = family_of(spec)
    generator = generator or request_generator(params)
    scheduler = schedulers(params.scheduler)
    family.set_timesteps(scheduler, spec, params)
    timesteps = scheduler.timesteps
    state = None
    if edit is None:
        latents = family.initial_latents(spec, params, scheduler, generator).to(device)
    else:
        timesteps = family.edit_timesteps(scheduler, params)
        state = family.edit_latents(spec, params, scheduler, generator, edit, timesteps).to(device)
        latents = state.latents
    extra = family.step_kwargs(scheduler, generator)
    cfg = family.cfg_scale(params)
    inputs = {name: as_tensor(value, device)
              for name, value in family.conditioning(spec, text, params, cfg is not None).items()}
    names = [t.name for t in family.denoiser_inputs(spec)]
    channels = None  # an inpainting model's extra input channels (mask, masked image), one row per model row
    if state is not None and state.channels is not None:
        channels = torch.cat([state.channels] * 2) if cfg is not None else state.channels

    for index, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if cfg is not None else latents
        if family.scales_model_input:
            model_input = scheduler.scale_model_input(model_input, t)
        if channels is not None:
            model_input = torch.cat([model_input, channels], dim=1)
        inputs["sample"] = model_input
        inputs["timestep"] = as_tensor(family.timestep_input(t, model_input.shape[0]), device)
        outputs = yield (spec.denoiser_component, {name: inputs[name] for name in names})
        noise_pred = as_tensor(outputs["noise_pred"], device)
        if spec.denoiser_out_channels == 2 * spec.latent_channels:
            noise_pred = noise_pred[:, : spec.latent_channels]  # learned sigma: keep the mean
        if cfg is not None:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + cfg * (cond - uncond)
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
        if state is not None and state.keep is not None and state.image_latents is not None:
            kept = state.image_latents
            if index < len(timesteps) - 1:
                kept = family.add_noise(scheduler, kept, state.noise, timesteps[index + 1 : index + 2])
            latents = state.keep * kept + (1 - state.keep) * latents
        if on_step is not None:
            on_step(StepState(index + 1, len(timesteps), latents))
    return latents.float()


def denoise(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
            call: Callable[[str, Arrays], Arrays], is_cancelled: Callable[[], bool] = lambda: False,
            generator: torch.Generator | None = None, on_step: Callable[[int, int], None] | None = None
            ) -> np.ndarray:
    """Run the loop with a blocking component call; `on_step(done, total)` after every step (progress)."""

    def progress(state: StepState) -> None:
        if on_step is not None:
            on_step(state.done, state.total)

    steps = denoise_steps(spec, params, schedulers, text, generator, on_step=cancellable(is_cancelled, progress))
    return as_numpy(run_blocking(steps, call))
