"""What the frontend needs from an inference backend, one Protocol per job, and `Engine`, all of them.

Routers and services ask for the narrowest Protocol that covers what they call, so a fake engine in a
test implements only what the code under test uses; the app's state holds an `Engine`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.engine.errors import ServiceUnavailable

ProgressCallback = Callable[[float], Awaitable[None]]
# Image requests: after each denoising step (done, total); each partial image (index, uint8 [n, H, W, 3]).
StepCallback = Callable[[int, int], Awaitable[None]]
PartialCallback = Callable[[int, np.ndarray], Awaitable[None]]


@dataclass(frozen=True)
class EditImages:
    """An image edit's inputs, already at the request's size: the image (uint8 [H, W, 3]) and, for
    inpainting, the mask (uint8 [H, W]: 255 = repaint, 0 = keep; OpenAI's transparent pixels are 255)."""

    image: np.ndarray
    mask: np.ndarray | None = None


class PipelineCatalog(Protocol):
    async def list_pipelines(self) -> list[str]:
        """Names of the loaded, ready pipelines, sorted."""

    async def served_pipeline(self, name: str) -> ServedPipeline:
        """The pipeline's limits, capabilities and streaming; ModelNotFound if `name` is not a loaded pipeline."""

    async def ready(self) -> bool:
        """True when the backend is ready and at least one pipeline is loaded."""


class ImageEngine(Protocol):
    async def generate(self, name: str, params: GenerationParams, *, edit: EditImages | None = None,
                       partial_images: int = 0, on_step: StepCallback | None = None,
                       on_partial: PartialCallback | None = None) -> np.ndarray:
        """uint8 images [num_images, height, width, 3].

        `edit`: img2img (no mask) or inpainting from the image, noised to `params.strength`.
        `partial_images` (0..3) previews reach `on_partial` while the request denoises, and
        `on_step(done, total)` follows every step; both need a pipeline whose limits say `streams`.
        """


class VideoEngine(Protocol):
    async def generate_video(self, name: str, params: GenerationParams, image: np.ndarray | None,
                             on_progress: ProgressCallback | None = None) -> np.ndarray:
        """uint8 frames [num_frames, height, width, 3]; `on_progress(0..1)` after each denoising step.
        `image`: the conditioning image (uint8 H x W x 3) of an image-to-video pipeline."""


class AdapterChecks(Protocol):
    async def check_adapters(self, name: str, lora: str) -> dict:
        """The pipeline's report on the adapters in `lora`; InvalidRequestError if one does not fit."""


class Engine(PipelineCatalog, ImageEngine, VideoEngine, AdapterChecks, Protocol):
    """Everything the frontend asks of a backend."""


async def resolve_model(catalog: PipelineCatalog, requested: str | None, default: str | None, *,
                        video: bool = False) -> str:
    """The pipeline to use: the request's, else the configured default when it makes what is asked
    (images or videos), else the first such pipeline loaded."""
    if requested:
        return requested
    if default and (await catalog.served_pipeline(default)).capabilities.is_video == video:
        return default
    for name in await catalog.list_pipelines():
        if (await catalog.served_pipeline(name)).capabilities.is_video == video:  # cached by the engine
            return name
    raise ServiceUnavailable(f"no {'video' if video else 'image'} pipeline is loaded in Triton yet")
