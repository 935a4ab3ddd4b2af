"""Videos API request/response models (pure pydantic: no FastAPI, no Triton client), and the one
place a video request becomes `GenerationParams`.

Decisions a client can see:
- `POST /v1/videos` takes OpenAI's fields (`prompt`, `model`, `seconds`, `size`, `input_reference`)
  beside the extension fields vLLM-Omni and SGLang clients send (`num_frames`, `fps`, `width`,
  `height`, `seed`, ...), as multipart, a urlencoded form or JSON. Written once in `to_params`:
  `width`/`height` complete or replace `size`, and one that disagrees with a given `size` is a 400
  naming it; `num_frames` replaces `seconds` x fps, and a `num_frames` that disagrees with given
  `seconds` is a 400 naming it; the pipeline's defaults fill the rest. Unknown fields are a 400.
- `seconds` in the answer is the generated clip's length, `num_frames / fps` (OpenAI's "4" when the
  request asked for 4 seconds at a rate that divides evenly).
- Strings are bounded as on the image routes (`frontend/schemas.py`): `prompt` and `negative_prompt` by
  DGATE_MAX_PROMPT_CHARS, names by MAX_NAME_CHARS; past one, a 400 naming the field.
- `interpolate` (1, 2 or 4) adds optical-flow frames after generation: `(F - 1) * k + 1` frames at
  `k * fps`, so the motion keeps its speed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dgate.core.capabilities import Capabilities
from dgate.core.errors import InvalidRequestError
from dgate.core.limits import MAX_SEED, MIN_FRAMES, check_prompt
from dgate.core.params import DEFAULT_MOTION_BUCKET_ID, DEFAULT_NOISE_AUG_STRENGTH, GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.jobs import JobStatus, VideoJob
from dgate.frontend.schemas import MAX_NAME_CHARS, SIZE_PATTERN, check_length
from dgate.frontend.video.interpolation import FACTORS

Variant = Literal["video", "thumbnail", "spritesheet"]
INPUT_ASSET_KEY = "input_asset"  # the job request's name of its conditioning image file, if any
_PARAM_FIELDS = tuple(field.name for field in fields(GenerationParams))
_CONDITIONING_FIELDS = ("motion_bucket_id", "noise_aug_strength", "decode_chunk_size")


class VideoCreateRequest(BaseModel):
    """Body of `POST /v1/videos` (multipart or JSON) and `POST /v1/video/generations` (JSON)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", description="what the video shows; required for text-to-video pipelines")
    model: str | None = Field(None, max_length=MAX_NAME_CHARS, description="a video pipeline from /v1/models; "
                              "default: the configured default_model if it makes videos, else the first video "
                              "pipeline")
    seconds: str | None = Field(None, max_length=32, description="clip length; frames = round(seconds x fps) unless "
                                "num_frames is given")
    size: str | None = Field(None, description="WIDTHxHEIGHT; default: the pipeline's default size")
    # Extensions (vLLM-Omni / SGLang field names).
    num_frames: int | None = Field(None, ge=1, description="frames to generate; default: from seconds, "
                                   "else the pipeline's default_num_frames")
    fps: int | None = Field(None, ge=1, description="frames per second; default: the pipeline's default_fps")
    width: int | None = Field(None, ge=1, description="overrides the width of `size`")
    height: int | None = Field(None, ge=1, description="overrides the height of `size`")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: random (reported nowhere yet, "
                             "but reused by remix)")
    num_inference_steps: int | None = Field(None, ge=1, description="default: the pipeline's default_steps")
    guidance_scale: float | None = Field(None, ge=0.0, description="default: the pipeline's default")
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, max_length=MAX_NAME_CHARS,
                                  description="a scheduler name from the model's `schedulers`")
    interpolate: int | None = Field(None, description="1, 2 or 4: optical-flow frames added between "
                                    "generated ones, played at fps x interpolate")
    motion_bucket_id: int | None = Field(None, description="image-to-video (SVD): more motion as it grows; "
                                         f"default {DEFAULT_MOTION_BUCKET_ID}")
    noise_aug_strength: float | None = Field(None, description="image-to-video (SVD): noise added to the "
                                             f"input image; default {DEFAULT_NOISE_AUG_STRENGTH}")
    decode_chunk_size: int | None = Field(None, description="frames the VAE decodes at once; default: the "
                                          "pipeline's")

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds_text(cls, value: Any) -> Any:
        # OpenAI sends a string ("4"); a JSON number is the same request.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:g}"
        return value

    @field_validator("seconds")
    @classmethod
    def _seconds_positive(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"seconds must be a positive number such as '4', got {value!r}")
        return value

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is not None and not SIZE_PATTERN.match(value):
            raise ValueError(f"size must be 'WIDTHxHEIGHT' such as '512x320', got {value!r}")
        return value

    @field_validator("interpolate")
    @classmethod
    def _interpolation_factor(cls, value: int | None) -> int | None:
        if value is not None and value not in FACTORS:
            raise ValueError(f"interpolate must be one of {', '.join(map(str, FACTORS))}, got {value}")
        return value

    def to_params(self, pipeline: ServedPipeline, *, model: str, has_reference: bool,
                  max_prompt_chars: int) -> tuple[GenerationParams, int]:
        """(the ensemble inputs, the interpolation factor); InvalidRequestError naming the first bad field."""
        limits, capabilities = pipeline.limits, pipeline.capabilities
        if not capabilities.is_video:
            raise InvalidRequestError(f"'{model}' makes images, not videos: use POST /v1/images/generations "
                                      "or a video model from /v1/models", "model")
        check_reference(capabilities, model=model, has_reference=has_reference)
        if not capabilities.takes_image:
            check_prompt(self.prompt)
        check_prompt_length(self.prompt, max_prompt_chars)
        check_length(self.negative_prompt, max_prompt_chars, "negative_prompt")
        size_width, size_height = (limits.default_width, limits.default_height) if self.size is None else (
            int(part) for part in self.size.split("x"))
        self._check_size_pair(size_width, size_height)
        fps = self.fps or limits.default_fps
        num_frames = self.num_frames or limits.default_num_frames
        if self.num_frames is not None and self.seconds is not None and \
                round(float(self.seconds) * fps) != self.num_frames:
            raise InvalidRequestError(
                f"num_frames={self.num_frames} disagrees with seconds={self.seconds} at {fps} fps "
                f"({round(float(self.seconds) * fps)} frames): give one of them, or both alike", "num_frames")
        if self.num_frames is None and self.seconds is not None:
            num_frames = round(float(self.seconds) * fps)
            if not MIN_FRAMES <= num_frames <= limits.max_num_frames:
                raise InvalidRequestError(
                    f"seconds={self.seconds} at {fps} fps is {num_frames} frames; '{model}' makes "
                    f"{MIN_FRAMES} to {limits.max_num_frames} frames (give fewer seconds, a lower fps or "
                    "num_frames)", "seconds")
        params = GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt or "",
            num_images=1,
            num_inference_steps=self.num_inference_steps or limits.default_steps,
            guidance_scale=limits.default_guidance_scale if self.guidance_scale is None else self.guidance_scale,
            # A fresh seed per request, kept with the job so that a remix reproduces the motion.
            seed=secrets.randbelow(MAX_SEED + 1) if self.seed is None else self.seed,
            width=self.width or size_width,
            height=self.height or size_height,
            scheduler=limits.scheduler_for(self.scheduler),
            max_sequence_length=limits.default_max_sequence_length,
            true_cfg_scale=1.0,
            num_frames=num_frames,
            fps=fps,
            # The conditioning knobs keep the core's defaults (GenerationParams') unless given.
            **{name: getattr(self, name) for name in _CONDITIONING_FIELDS if getattr(self, name) is not None},
        )
        limits.validate(**vars(params), video=capabilities.is_video)
        return params, self.interpolate or 1


    def _check_size_pair(self, size_width: int, size_height: int) -> None:
        """vLLM-Omni's `width`/`height` beside OpenAI's `size`: the same request, or a 400 naming the field."""
        if self.size is None:
            return
        for name, value, from_size in (("width", self.width, size_width), ("height", self.height, size_height)):
            if value is not None and value != from_size:
                raise InvalidRequestError(f"{name}={value} disagrees with size={self.size}: give one of them, "
                                          "or both alike", name)


def check_reference(capabilities: Capabilities, *, model: str, has_reference: bool) -> None:
    """Image-to-video needs `input_reference`; text-to-video refuses one rather than ignore it."""
    if capabilities.takes_image and not has_reference:
        raise InvalidRequestError(f"'{model}' makes a video from an image: send input_reference (an image "
                                  "file, multipart)", "input_reference")
    if not capabilities.takes_image and has_reference:
        raise InvalidRequestError(f"'{model}' is a text-to-video pipeline and takes no input_reference",
                                  "input_reference")


def check_prompt_length(prompt: str, max_prompt_chars: int) -> None:
    if len(prompt) > max_prompt_chars:
        raise InvalidRequestError(f"prompt is {len(prompt)} characters long, the maximum is {max_prompt_chars}",
                                  "prompt")


class VideoRemixRequest(BaseModel):
    """Body of `POST /v1/videos/{video_id}/remix`: the source's request with a new prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str


# -- the job's stored request: every GenerationParams field + interpolate + the input image file --------


def job_request(params: GenerationParams, interpolate: int, input_asset: str | None) -> dict[str, Any]:
    return {**asdict(params), "interpolate": interpolate, INPUT_ASSET_KEY: input_asset}


def job_params(request: dict[str, Any]) -> tuple[GenerationParams, int, str | None]:
    """The inverse of `job_request`: (params, interpolation factor, input image asset name)."""
    params = GenerationParams(**{name: request[name] for name in _PARAM_FIELDS if name in request})
    return params, int(request.get("interpolate", 1)), request.get(INPUT_ASSET_KEY)


def clip_seconds(num_frames: int, fps: int) -> str:
    """OpenAI carries the length as text: 16 frames at 8 fps is "2", 25 at 7 is "3.57143"."""
    return f"{num_frames / fps:g}"


# -- responses ----------------------------------------------------------------------------------------


class VideoError(BaseModel):
    code: str
    message: str


class VideoObject(BaseModel):
    """OpenAI's `Video` object."""

    id: str
    object: Literal["video"] = "video"
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    model: str
    prompt: str | None = None
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None

    @classmethod
    def from_job(cls, job: VideoJob) -> VideoObject:
        error = None if job.error is None else VideoError(code=job.error.get("code", "generation_failed"),
                                                          message=job.error.get("message", ""))
        return cls(id=job.id, status=job.status, progress=job.progress, created_at=job.created_at,
                   completed_at=job.completed_at, expires_at=job.expires_at, model=job.model, prompt=job.prompt,
                   seconds=job.seconds, size=job.size, error=error, remixed_from_video_id=job.remixed_from_video_id)


class VideoList(BaseModel):
    """A page of `GET /v1/videos`; `has_more` is always sent (the openai client's iterator stops on it)."""

    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True
