"""What a served pipeline can do, apart from its limits: what it makes and which requests it takes.

Part of the pipeline (`PipelineSpec.capabilities`), written once by its family adapter at export.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    # What the pipeline makes: "image", "text-to-video" or "image-to-video".
    task: str = "image"
    # Image edits: img2img and inpainting from an uploaded image (families diffusers has them for).
    edits: bool = False
    inpaint_model: bool = False  # the denoiser is a dedicated inpainting model (9-channel UNet)
    precision: str = "fp32"  # the denoiser's: fp32 | fp16 | int8 | fp8 (reported)

    @property
    def is_video(self) -> bool:
        return self.task != "image"

    @property
    def takes_image(self) -> bool:
        return self.task == "image-to-video"
