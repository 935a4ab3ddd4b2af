"""What a served pipeline accepts: defaults and limits, written once.

Export stores these as string parameters of the pipeline's ensemble `config.pbtxt`
(`dgate.core.served_pipeline`); the denoiser
validates against them inside Triton and the frontend reads them from Triton's model config (and
reports them on `/v1/models`), so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dgate.core.errors import InvalidRequestError
from dgate.core.params import DEFAULT_MOTION_BUCKET_ID, DEFAULT_NOISE_AUG_STRENGTH

MAX_SEED = 2**63 - 1
MIN_FRAMES = 2  # a video; interpolation needs two frames
MAX_FPS = 60
DEFAULT_SCHEDULER = "default"  # the scheduler class the pipeline was saved with


def _check_range(name: str, value: float, low: float, high: float, param: str | None = None) -> None:
    """The one "<name> must be between <low> and <high>, got <value>" rule."""
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}, got {value}", param or name)


def check_prompt(prompt: str) -> None:
    """The one blank-prompt rule (frontend, tokenizer model)."""
    if not prompt.strip():
        raise InvalidRequestError("prompt must be a non-empty string", "prompt")


@dataclass(frozen=True)
class GenerationLimits:
    family: str  # "sd", "sdxl", "pixart", "sd3", "flux": reported, never branched on outside the adapters
    default_width: int
    default_height: int
    min_size: int
    max_width: int
    max_height: int
    size_multiple: int
    default_steps: int
    max_steps: int
    max_images: int
    default_guidance_scale: float
    max_guidance_scale: float
    default_scheduler: str  # a name from `schedulers`, used when a request names none
    schedulers: tuple[str, ...]  # the names this family can use ("default" included)
    default_max_sequence_length: int  # T5 prompt tokens when the request gives 0; 0 = no T5 encoder
    max_sequence_length: int
    true_cfg: bool  # Flux: `true_cfg_scale` > 1 with a negative prompt runs classifier-free guidance
    default_num_frames: int = 0
    max_num_frames: int = 0
    default_fps: int = 0
    def scheduler_for(self, requested: str | None) -> str:
        """The request's scheduler, else the pipeline's default."""
        return requested or self.default_scheduler

    def sequence_length_for(self, requested: int) -> int:
        """T5 prompt length for a request (checked): 0 means the pipeline's default."""
        self.check_sequence_length(requested)
        return requested or self.default_max_sequence_length

    def check_sequence_length(self, max_sequence_length: int) -> None:
        if max_sequence_length and not self.max_sequence_length:
            raise InvalidRequestError(
                f"max_sequence_length applies to pipelines with a T5 text encoder; this {self.family} "
                f"pipeline has none", "max_sequence_length",
            )
        if max_sequence_length:  # 0 = the default
            _check_range("max_sequence_length", max_sequence_length, 1, self.max_sequence_length)

    def validate(
        self,
        *,
        num_images: int,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        scheduler: str,
        max_sequence_length: int = 0,
        true_cfg_scale: float = 1.0,
        num_frames: int = 0,
        fps: int = 0,
        motion_bucket_id: int = DEFAULT_MOTION_BUCKET_ID,
        noise_aug_strength: float = DEFAULT_NOISE_AUG_STRENGTH,
        decode_chunk_size: int = 0,
        strength: float = 1.0,
        video: bool = False,
        **_: Any,
    ) -> None:
        """Raise InvalidRequestError naming the first field that is out of bounds.

        Takes the fields of `DenoiseParams` (`validate(**vars(params))`); the prompt text is checked
        by `check_prompt` where the text is. `video`: the pipeline's `Capabilities.is_video`.
        """
        _check_range("n", num_images, 1, self.max_images)
        _check_range("num_inference_steps", num_inference_steps, 1, self.max_steps)
        _check_range("guidance_scale", guidance_scale, 0, self.max_guidance_scale)
        _check_range("seed", seed, 0, MAX_SEED)
        for name, value, maximum in (("width", width, self.max_width), ("height", height, self.max_height)):
            if value % self.size_multiple or not self.min_size <= value <= maximum:
                raise InvalidRequestError(
                    f"{name} must be a multiple of {self.size_multiple} between {self.min_size} and "
                    f"{maximum}, got {value}",
                    "size",
                )
        if scheduler not in self.schedulers:
            raise InvalidRequestError(
                f"scheduler must be one of {', '.join(self.schedulers)} for this {self.family} pipeline, "
                f"got {scheduler!r}",
                "scheduler",
            )
        self.check_sequence_length(max_sequence_length)
        if not self.true_cfg and true_cfg_scale != 1.0:
            raise InvalidRequestError(
                f"true_cfg_scale applies to pipelines with true classifier-free guidance (flux); this "
                f"{self.family} pipeline uses guidance_scale", "true_cfg_scale",
            )
        _check_range("true_cfg_scale", true_cfg_scale, 0, self.max_guidance_scale)
        if video:
            _check_range("n", num_images, 1, 1)  # one video per request
            _check_range("num_frames", num_frames, MIN_FRAMES, self.max_num_frames)
            _check_range("fps", fps, 1, MAX_FPS)
            _check_range("motion_bucket_id", motion_bucket_id, 0, 1023)
            _check_range("noise_aug_strength", noise_aug_strength, 0, 1)
            _check_range("decode_chunk_size", decode_chunk_size, 0, num_frames)
        elif num_frames:
            raise InvalidRequestError(f"this {self.family} pipeline makes images, not videos", "model")
        if not 0 < strength <= 1:
            raise InvalidRequestError(f"strength must be greater than 0 and at most 1, got {strength}", "strength")
