"""The values of one generation request, shared by the frontend (torch-free) and the denoiser."""

from __future__ import annotations

from dataclasses import dataclass

# SVD's conditioning defaults (diffusers' StableVideoDiffusionPipeline): the one source for every caller.
DEFAULT_MOTION_BUCKET_ID = 127
DEFAULT_NOISE_AUG_STRENGTH = 0.02


@dataclass(frozen=True)
class DenoiseParams:
    """What the denoiser sees: every ensemble input except the prompt text (already encoded).

    The negative prompt's text is here because two families act on its presence: SDXL zeroes the
    unconditional embeddings when it is empty, Flux runs true CFG only when one is given.
    """

    num_images: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    height: int
    width: int
    scheduler: str
    max_sequence_length: int  # T5 prompt tokens; 0 = the pipeline's default
    true_cfg_scale: float
    negative_prompt: str
    # Video pipelines only (0 frames = an image request).
    num_frames: int = 0
    fps: int = 0  # frames per second the video is generated for (SVD conditions on it)
    motion_bucket_id: int = DEFAULT_MOTION_BUCKET_ID  # SVD: more motion as it grows
    noise_aug_strength: float = DEFAULT_NOISE_AUG_STRENGTH  # SVD: noise added to the conditioning image
    decode_chunk_size: int = 0  # frames the VAE decodes at once; 0 = the pipeline's default
    # Image edits (img2img, inpainting): how far the input image is noised before denoising (0..1].
    strength: float = 1.0


@dataclass(frozen=True, kw_only=True)
class GenerationParams(DenoiseParams):
    """One ensemble request; field names are the ENSEMBLE_INPUTS tensor names."""

    prompt: str
    lora: str = ""  # the adapters, as dgate.core.lora.request.encode_adapters writes them
