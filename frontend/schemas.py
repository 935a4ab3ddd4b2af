"""OpenAI-shaped request/response models (pure pydantic: no FastAPI, no Triton client).

Decisions a client can see:
- Unknown request fields are rejected with 400 ("Unrecognized request argument supplied: <field>",
  `param` = the field), like OpenAI does: a misspelt `num_inference_step` must not silently run
  with defaults. OpenAI fields D-Gate cannot honour (GIF/SVG output, frame options) are therefore
  rejected rather than ignored.
- `style`, `moderation`, `complexity`, `user` and `safety_identifier` are accepted and ignored: they
  steer OpenAI's own models/policies and have no diffusion counterpart; `safety_identifier` (else
  `user`) is echoed back as OpenAI does.
- `background`: `auto`/`opaque` are accepted; `transparent` is a 400, the pipelines output RGB only.
- `output_compression` (0..100, default 100) is the JPEG/WebP quality, 100 = least compression;
  with `png` it is a 400, as for OpenAI.
- Every string and list field is bounded: `prompt` and `negative_prompt` by DGATE_MAX_PROMPT_CHARS,
  names (`model`, `user`, `scheduler`, an adapter's) by MAX_NAME_CHARS, an adapter path by
  MAX_PATH_CHARS, `lora`/`lora_scale` lists by MAX_LORAS; past one, a 400 naming the field.
- `stream` + `partial_images` (0..3): Server-Sent Events (see `frontend/streaming.py`); partial images
  need a pipeline exported with the streaming denoiser (`streams` in its ensemble config).
- Edits and variations are img2img (or inpainting with a mask) at `strength` (0, 1]: by default 0.8
  without a mask and 1.0 with one, diffusers' defaults. `input_fidelity` is accepted and ignored: the
  input image's influence is `strength`'s to set. A variation is an edit with a fixed prompt.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dgate.core.errors import InvalidRequestError
from dgate.core.limits import MAX_SEED, GenerationLimits, check_prompt
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline

OPENAI_MAX_IMAGES = 10
MAX_NAME_CHARS = 256  # model, user, safety_identifier, scheduler and adapter names
MAX_PATH_CHARS = 4096  # an adapter's path (PATH_MAX)
MAX_LORAS = 8  # adapters (and lora_scale values) in one request
SIZE_PATTERN = re.compile(r"^([1-9][0-9]{0,5})x([1-9][0-9]{0,5})$")
Quality = Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"]
QualityTier = Literal["low", "medium", "high", "xhigh", "max"]
# OpenAI's legacy and `auto` names -> the tier reported back in the response.
_LEGACY_QUALITY: dict[str, QualityTier] = {"auto": "medium", "standard": "medium", "hd": "high"}
QUALITY_TIERS: dict[str, QualityTier] = _LEGACY_QUALITY | {tier: tier for tier in get_args(QualityTier)}


def steps_for_quality(tier: QualityTier, limits: GenerationLimits) -> int:
    """Denoising steps for a quality tier, relative to the pipeline's own `default_steps` (d).

    low = ceil(d/2), medium = d (also `auto`/`standard`), high = 2d (also `hd`), xhigh = 3d,
    max = max_steps; each capped at the pipeline's max_steps. Distilled pipelines (d = 4) thus get
    2/4/8/12 steps and a 30-step SD pipeline 15/30/60/90, never more than the deployment allows.
    """
    d, cap = limits.default_steps, limits.max_steps
    steps = {"low": (d + 1) // 2, "medium": d, "high": 2 * d, "xhigh": 3 * d, "max": cap}[tier]
    return max(1, min(cap, steps))


class LoraObject(BaseModel):
    """vLLM-Omni's per-request adapter, `{"name", "path", "scale"}` (its `lora_name`, `local_path`,
    `lora_path`, `lora_scale` spellings too). `path` is relative to the adapters directory or absolute
    under an adapter root (`DGATE_LORA_DIR`, `DGATE_LORA_DIRS`); `scale` defaults to `lora_scale`'s."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS,
                      validation_alias=AliasChoices("name", "lora_name", "adapter"))
    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS,
                      validation_alias=AliasChoices("path", "local_path", "lora_path", "lora_local_path"))
    scale: float | None = Field(None, validation_alias=AliasChoices("scale", "lora_scale"))


LORA_SHAPES = "an adapter name, a {name, path, scale} object or a list of them"


def _lora_entry(value: Any, param: str) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("{"):  # an object sent as JSON text (a form field)
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidRequestError(f"{param}: not a valid JSON {{name, path, scale}} object ({error})",
                                      param) from error
    if isinstance(value, dict):
        try:
            return LoraObject.model_validate(value)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidRequestError(f"{param}.{field}: {first['msg']} (a lora object is {{name, path, scale}}: "
                                      "`name` and `path` are required)", f"{param}.{field}") from error
    if not isinstance(value, str):
        raise InvalidRequestError(f"{param} must be {LORA_SHAPES}, got {type(value).__name__}", param)
    check_length(value, MAX_NAME_CHARS, param)
    return value


def check_length(value: str | None, limit: int, param: str) -> None:
    """A 400 naming `param` when `value` is longer than `limit` characters."""
    if value is not None and len(value) > limit:
        raise InvalidRequestError(f"{param} is {len(value)} characters long, the maximum is {limit}", param)


def check_scales(value: Any) -> Any:
    """`lora_scale`: one value, or at most MAX_LORAS (one per adapter)."""
    if isinstance(value, list) and len(value) > MAX_LORAS:
        raise InvalidRequestError(f"lora_scale lists {len(value)} values, at most {MAX_LORAS} are accepted",
                                  "lora_scale")
    return value


def parse_lora(value: Any) -> Any:
    """The `lora` field's shapes (D-Gate's names, vLLM-Omni's objects) -> names and LoraObjects;
    a malformed object is a 400 naming its field (`lora.path`, `lora.1.name`)."""
    if value is None:
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):  # a list sent as JSON text (a form field)
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidRequestError(f"lora: not a valid JSON list ({error})", "lora") from error
    if isinstance(value, list):
        if len(value) > MAX_LORAS:
            raise InvalidRequestError(f"lora lists {len(value)} adapters, at most {MAX_LORAS} are accepted", "lora")
        return [_lora_entry(entry, f"lora.{index}") for index, entry in enumerate(value)]
    return _lora_entry(value, "lora")


# The request fields of adapters, checked the same way on every route that takes them.
LoraField = Annotated[str | LoraObject | list[str | LoraObject] | None, BeforeValidator(parse_lora)]
LoraScaleField = Annotated[float | list[float] | None, BeforeValidator(check_scales)]


class ImageGenerationRequest(BaseModel):
    """Body of `POST /v1/images/generations`: OpenAI's fields plus D-Gate's diffusion extensions."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    n: int | None = Field(None, ge=1, le=OPENAI_MAX_IMAGES)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Quality | None = None
    background: Literal["auto", "opaque", "transparent"] | None = None
    style: Literal["vivid", "natural"] | None = None
    moderation: Literal["auto", "low"] | None = None
    complexity: Literal["low", "medium", "high"] | None = None
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    safety_identifier: str | None = Field(None, max_length=MAX_NAME_CHARS)
    stream: bool | None = Field(None, description="true: answer with Server-Sent Events")
    partial_images: int | None = Field(None, ge=0, le=3, description="previews streamed before the final "
                                       "image (stream=true; a pipeline with the streaming denoiser)")
    # D-Gate extensions (pass them with the openai client's `extra_body`).
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0)
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, max_length=MAX_NAME_CHARS, description="a scheduler name from the "
                                  "model's `schedulers` (see /v1/models); default: the model's `default_scheduler`")
    max_sequence_length: int | None = Field(None, ge=1, description="T5 prompt tokens (pipelines with a T5 "
                                            "encoder); default: the model's `default_max_sequence_length`")
    true_cfg_scale: float | None = Field(None, ge=0.0, description="Flux: classifier-free guidance scale, "
                                         "applied when > 1 and a negative_prompt is given")
    lora: LoraField = Field(None, description="adapter name(s) from the adapters directory or set with "
                            "/v1/set_lora, or vLLM-Omni's {name, path, scale} object(s); default: the model's "
                            "active adapters")
    lora_scale: LoraScaleField = Field(None, description="strength of each adapter (one value "
                                                   "is used for all)")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        check_prompt(value)  # the same rule as the tokenizer model's
        return value


    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not SIZE_PATTERN.match(value):
            raise ValueError(f"size must be 'auto' or 'WIDTHxHEIGHT' such as '512x512', got {value!r}")
        return value

    @field_validator("background")
    @classmethod
    def _opaque_only(cls, value: str | None) -> str | None:
        if value == "transparent":
            raise ValueError(
                "background 'transparent' is not supported: the pipelines produce opaque RGB "
                "images; use 'opaque' or 'auto'"
            )
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ImageGenerationRequest:
        if self.output_compression is not None and self.output_format in (None, "png"):
            raise InvalidRequestError(
                "output_compression applies to output_format 'jpeg' or 'webp' only, not 'png'",
                "output_compression",
            )
        if self.num_inference_steps is not None and self.quality not in (None, "auto"):
            raise InvalidRequestError(
                f"give either quality ({self.quality!r}) or num_inference_steps, not both",
                "num_inference_steps",
            )
        return self

    @property
    def quality_tier(self) -> QualityTier | None:
        """The tier reported back; None when explicit num_inference_steps replaced it."""
        return None if self.num_inference_steps is not None else QUALITY_TIERS[self.quality or "auto"]

    def to_params(self, limits: GenerationLimits, *, max_prompt_chars: int,
                  default_size: tuple[int, int] | None = None, strength: float = 1.0) -> GenerationParams:
        """The ensemble inputs for this request; InvalidRequestError (with `param`) if out of limits.
        `default_size` (width, height) replaces the pipeline's when the request's size is `auto` or unset."""
        check_length(self.prompt, max_prompt_chars, "prompt")
        check_length(self.negative_prompt, max_prompt_chars, "negative_prompt")
        if self.size in (None, "auto"):
            width, height = default_size or (limits.default_width, limits.default_height)
        else:
            width, height = (int(part) for part in self.size.split("x"))
        tier = self.quality_tier
        params = GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt or "",
            num_images=self.n or 1,
            num_inference_steps=self.num_inference_steps or steps_for_quality(tier or "medium", limits),
            guidance_scale=limits.default_guidance_scale
            if self.guidance_scale is None
            else self.guidance_scale,
            # A fresh seed per request, reported back so that any image can be reproduced.
            seed=secrets.randbelow(MAX_SEED + 1) if self.seed is None else self.seed,
            height=height,
            width=width,
            scheduler=limits.scheduler_for(self.scheduler),
            # Checked with the other fields below, so the first bad field is the one reported.
            max_sequence_length=self.max_sequence_length or limits.default_max_sequence_length,
            true_cfg_scale=1.0 if self.true_cfg_scale is None else self.true_cfg_scale,
            strength=strength,
        )
        limits.validate(**vars(params))
        return params


# A variation is an edit, and the tokenizer (like check_prompt) refuses a blank prompt.
VARIATION_PROMPT = "a variation of the image"


class ImageEditRequest(ImageGenerationRequest):
    """The fields of `POST /v1/images/edits` (multipart, beside the `image` and `mask` files)."""

    input_fidelity: Literal["low", "high"] | None = Field(None, description="accepted and ignored: set how "
                                                          "much of the image is kept with `strength`")
    strength: float | None = Field(None, gt=0.0, le=1.0, description="how far the image is noised before "
                                   "denoising (1 = nothing kept); default 0.8, or 1.0 with a mask. "
                                   "int(num_inference_steps x strength) steps run")

    def to_edit_params(self, limits: GenerationLimits, *, max_prompt_chars: int, default_size: tuple[int, int],
                       masked: bool) -> GenerationParams:
        strength = self.strength if self.strength is not None else 1.0 if masked else 0.8
        params = self.to_params(limits, max_prompt_chars=max_prompt_chars, default_size=default_size,
                                strength=strength)
        if int(params.num_inference_steps * strength) < 1:
            raise InvalidRequestError(
                f"strength {strength} of {params.num_inference_steps} steps runs no denoising step "
                "(int(num_inference_steps x strength) = 0): raise strength or num_inference_steps", "strength")
        return params


class ImageVariationRequest(BaseModel):
    """The fields of `POST /v1/images/variations` (multipart, beside the `image` file): OpenAI's, and the
    extensions of an edit. The prompt defaults to VARIATION_PROMPT."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=MAX_NAME_CHARS)
    n: int | None = Field(None, ge=1, le=OPENAI_MAX_IMAGES)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    # D-Gate extensions.
    prompt: str = Field(VARIATION_PROMPT, min_length=1, description="what the variation shows")
    strength: float | None = Field(None, gt=0.0, le=1.0, description="how far the image is noised; default 0.8")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0)
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, max_length=MAX_NAME_CHARS)
    lora: LoraField = None
    lora_scale: LoraScaleField = None



class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None  # never set: D-Gate does not rewrite prompts


class InputTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class Usage(BaseModel):
    """Token usage, always zero: tokenization happens inside Triton and D-Gate does not bill per token.

    The fields are present because OpenAI clients expect the object; zero is honest where an estimate
    from another tokenizer would not be.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: Literal["png", "jpeg", "webp"]
    quality: QualityTier | None = None
    size: str
    usage: Usage = Field(default_factory=Usage)
    safety_identifier: str | None = None
    seed: int  # D-Gate extension: the seed actually used (random when the request gave none)


class ImageStreamEvent(BaseModel):
    """The fields every streamed image event has (OpenAI's ImageGen/ImageEdit stream events)."""

    type: str  # "<kind>.partial_image" | "<kind>.completed"; kind = image_generation | image_edit
    b64_json: str
    created_at: int
    size: str
    quality: QualityTier | Literal["auto"]  # "auto" when num_inference_steps replaced the tier
    background: Literal["opaque"] = "opaque"
    output_format: Literal["png", "jpeg", "webp"]


class ImagePartialImageEvent(ImageStreamEvent):
    partial_image_index: int  # 0-based; one event per image of the request for each index


class ImageCompletedEvent(ImageStreamEvent):
    usage: Usage = Field(default_factory=Usage)
    safety_identifier: str | None = None
    seed: int  # D-Gate extension, as in ImagesResponse


class ModelObject(BaseModel):
    """OpenAI's model object; D-Gate adds what a client needs to build a valid request."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dgate"
    family: str | None = Field(None, description="pipeline family: sd, sdxl, pixart, sd3, flux")
    default_size: str | None = Field(None, description="WIDTHxHEIGHT used when size is 'auto' or omitted")
    max_size: str | None = Field(None, description="largest WIDTHxHEIGHT served")
    min_size: int | None = Field(None, description="smallest width/height served")
    size_multiple: int | None = Field(None, description="width and height must be multiples of this")
    default_steps: int | None = None
    max_steps: int | None = None
    max_images: int | None = None
    default_guidance_scale: float | None = None
    max_guidance_scale: float | None = Field(None, description="upper bound of guidance_scale and true_cfg_scale")
    default_scheduler: str | None = None
    schedulers: list[str] | None = Field(None, description="the scheduler names this pipeline accepts")
    default_max_sequence_length: int | None = Field(None, description="T5 prompt tokens by default (0: no T5)")
    max_sequence_length: int | None = None
    true_cfg: bool | None = Field(None, description="accepts true_cfg_scale (Flux)")
    precision: str | None = Field(None, description="the denoiser's precision: fp32, fp16, int8 or fp8")
    task: str | None = Field(None, description="image, text-to-video or image-to-video")
    default_num_frames: int | None = Field(None, description="video: frames when neither seconds nor num_frames")
    max_num_frames: int | None = None
    default_fps: int | None = None
    streams: bool | None = Field(None, description="images: progress and partial images can stream (SSE, WebSocket)")
    edits: bool | None = Field(None, description="images: /v1/images/edits and /variations are served")

    @classmethod
    def from_pipeline(cls, model_id: str, created: int, pipeline: ServedPipeline) -> ModelObject:
        limits, capabilities = pipeline.limits, pipeline.capabilities
        return cls(
            id=model_id, created=created, family=limits.family,
            default_size=f"{limits.default_width}x{limits.default_height}",
            max_size=f"{limits.max_width}x{limits.max_height}", min_size=limits.min_size,
            size_multiple=limits.size_multiple, default_steps=limits.default_steps, max_steps=limits.max_steps,
            max_images=limits.max_images, default_guidance_scale=limits.default_guidance_scale,
            max_guidance_scale=limits.max_guidance_scale,
            default_scheduler=limits.default_scheduler, schedulers=list(limits.schedulers),
            default_max_sequence_length=limits.default_max_sequence_length,
            max_sequence_length=limits.max_sequence_length, true_cfg=limits.true_cfg,
            precision=capabilities.precision, task=capabilities.task,
            **({"default_num_frames": limits.default_num_frames, "max_num_frames": limits.max_num_frames,
                "default_fps": limits.default_fps}
               if capabilities.is_video else {"streams": pipeline.streams, "edits": capabilities.edits}),
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
