"""One image request end to end as a program of component calls, run by a blocking or an async driver.

`image_program` is a generator: it yields `(component, inputs)` for every model call the request
needs (the VAE encoder for an edit, the denoiser once per step, the VAE decoder at the end) and is
sent each call's outputs back. The arithmetic stays in one place while the caller decides how calls
are made: `run_blocking` (PyTorch in the parity tests, blocking BLS) or `run_async`, with which one
Triton model instance interleaves the steps of many requests (`await request.async_exec()`), so the
denoiser's dynamic batcher sees all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

import numpy as np

from dgate.core.denoise import OnStep, denoise_steps, request_generator
from dgate.core.edit import EditSource, check_edit, encoded_edit, encoder_rows, keep_unmasked
from dgate.core.families import family_of
from dgate.core.families.base import TextOutputs
from dgate.core.images import to_uint8_images
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory

Arrays = dict[str, np.ndarray]
Call = tuple[str, Arrays]  # (component, inputs)
T = TypeVar("T")
Program = Generator[Call, Arrays, T]
AsyncComponentCall = Callable[[str, Arrays], Awaitable[Arrays]]


def image_program(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
                  edit: EditSource | None = None, on_step: OnStep | None = None) -> Program[np.ndarray]:
    """uint8 images [n, H, W, 3] for one request (text to image, img2img or inpainting)."""
    family = family_of(spec)
    encoded = None
    if edit is not None:
        check_edit(edit, params.height, params.width)
        moments = yield ("vae_encoder", {"image": encoder_rows(edit)})
        encoded = encoded_edit(edit, moments["latent"], moments["latent_std"])
    names = [t.name for t in family.denoiser_inputs(spec)]
    steps = denoise_steps(spec, params, schedulers, text, request_generator(params), edit=encoded, on_step=on_step)
    try:
        inputs = next(steps)
        while True:
            outputs = yield (spec.denoiser_component, {name: inputs[name] for name in names})
            inputs = steps.send(outputs["noise_pred"])
    except StopIteration as done:
        latents = done.value
    decoded = yield ("vae_decoder", {"latent": latents})
    images = to_uint8_images(decoded["image"])
    return images if edit is None else keep_unmasked(images, edit)


def run_blocking(program: Program[T], call: Callable[[str, Arrays], Arrays]) -> T:
    try:
        request = next(program)
        while True:
            request = program.send(call(*request))
    except StopIteration as done:
        return done.value


async def run_async(program: Program[T], call: AsyncComponentCall) -> T:
    try:
        request = next(program)
        while True:
            request = program.send(await call(*request))
    except StopIteration as done:
        return done.value
