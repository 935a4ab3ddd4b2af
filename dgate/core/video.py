"""One video request end to end, with every model call left to the caller.

The same function runs inside Triton (each `call` is a BLS request to a component model) and in
process on the PyTorch modules (the parity check): conditioning from the request's image when the
family takes one, the denoising loop, then the VAE decoder chunk by chunk, so the decoded frames
held at once are bounded by `decode_chunk_size`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dgate.core.denoise import denoise, request_generator
from dgate.core.families import family_of
from dgate.core.families.base import ComponentCall, TextOutputs
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory


def generate_video(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
                   image: np.ndarray | None, call: ComponentCall, *,
                   is_cancelled: Callable[[], bool] = lambda: False,
                   on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint8 frames [1, F, H, W, 3] for one request."""
    family = family_of(spec)
    generator = request_generator(params)
    text = text | family.encode_conditioning(spec, params, image, generator, call)
    latents = denoise(spec, params, schedulers, text, call, is_cancelled, generator, on_step)
    decoded = [call("vae_decoder", {"latent": chunk})["image"]
               for chunk in family.decode_chunks(spec, latents, params)]
    return family.frames_from_decoded(decoded)
