"""One image request end to end as a program of component calls (`dgate.core.program`).

`image_program` yields `(component, inputs)` for every model call the request needs (the VAE
encoder for an edit, the denoiser once per step through the loop's own program, the VAE decoder at
the end) and is sent each call's outputs back; `run_blocking` or `run_async` runs it.
"""

from __future__ import annotations

import numpy as np
import torch

from dgate.core.denoise import OnStep, denoise_steps, request_generator
from dgate.core.device import as_numpy
from dgate.core.edit import EditSource, check_edit, encoded_edit, encoder_rows, keep_unmasked
from dgate.core.families.base import TextOutputs
from dgate.core.images import to_uint8_images
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.program import Program
from dgate.core.schedulers import SchedulerFactory


def image_program(spec: PipelineSpec, params: DenoiseParams, schedulers: SchedulerFactory, text: TextOutputs,
                  edit: EditSource | None = None, on_step: OnStep | None = None,
                  device: torch.device | str = "cpu") -> Program[np.ndarray]:
    """uint8 images [n, H, W, 3] for one request (text to image, img2img or inpainting); its tensors
    stay on `device` from the first step to the decoded image."""
    encoded = None
    if edit is not None:
        check_edit(edit, params.height, params.width)
        moments = yield ("vae_encoder", {"image": encoder_rows(edit)})
        encoded = encoded_edit(edit, as_numpy(moments["latent"]), as_numpy(moments["latent_std"]))
    latents = yield from denoise_steps(spec, params, schedulers, text, request_generator(params), edit=encoded,
                                       on_step=on_step, device=device)
    decoded = yield ("vae_decoder", {"latent": latents})
    images = to_uint8_images(decoded["image"])
    return images if edit is None else keep_unmasked(images, edit)
