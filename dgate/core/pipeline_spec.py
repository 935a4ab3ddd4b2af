"""The description of a served pipeline: its family, shapes, text encoders and precisions.

Written once from the diffusers pipeline's own configs at export time (by the pipeline's family
adapter, `dgate.core.families`), saved as a versioned `pipeline.json` next to the Triton models, and
read back by the denoiser and tokenizer models. This module is data only (no torch), so the
tokenizer model and the frontend can import it cheaply.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dgate.core.capabilities import Capabilities
from dgate.core.limits import DEFAULT_SCHEDULER, GenerationLimits
from dgate.core.quantization import Quantization
from dgate.core.tensors import TEXT_LENGTH, TensorSpec

logger = logging.getLogger(__name__)

# Version 1: the spine's single-text-encoder layout (family "unet"/"dit"). Version 2: text encoders
# as a list, per-component precisions, family facts. Version 3: capabilities apart from limits (and no
# `streams`: a serving choice, in the ensemble's config). A reader loads every version up to its own.
FORMAT_VERSION = 3

# The spec's file name beside the Triton models that read it.
PIPELINE_FILE = "pipeline.json"


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder and its tokenizer, as the pipeline's `_encode_prompt` uses them."""

    component: str  # diffusers attribute = Triton model suffix: text_encoder, text_encoder_2, ...
    tokenizer: str  # diffusers attribute of its tokenizer: tokenizer, tokenizer_2, ...
    vocab_size: int
    max_length: int  # CLIP: the fixed 77; T5: the pipeline's default max_sequence_length
    variable_length: bool  # T5: padded to the request's max_sequence_length
    hidden_size: int  # width of the `hidden_states` output; 0 = the pipeline does not use it
    hidden_layer: int  # -1: last hidden state; -2: penultimate (SDXL and SD3 CLIPs)
    pooled_size: int  # width of the `pooled` output (text_embeds / pooler_output); 0 = unused
    takes_attention_mask: bool  # the encoder reads the prompt mask (PixArt's T5; SD3/Flux pass none)
    pad_token_id: int

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        dims, axes = ((-1,), (TEXT_LENGTH,)) if self.variable_length else ((self.max_length,), ())
        ids = TensorSpec("input_ids", "TYPE_INT64", dims, axes)
        mask = TensorSpec("attention_mask", "TYPE_INT64", dims, axes)
        return (ids, mask) if self.takes_attention_mask else (ids,)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        tensors: tuple[TensorSpec, ...] = ()
        if self.hidden_size:
            length = self.inputs[0]
            tensors += (TensorSpec("hidden_states", "TYPE_FP32", (*length.dims, self.hidden_size), length.axes),)
        if self.pooled_size:
            tensors += (TensorSpec("pooled", "TYPE_FP32", (self.pooled_size,)),)
        return tensors


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    pipeline_class: str
    family: str  # the adapter in dgate.core.families that knows this pipeline class
    denoiser_component: str  # "unet" | "transformer"
    latent_channels: int  # channels of the unpacked latent the VAE sees
    denoiser_out_channels: int  # 2 * latent_channels when the model learns sigma (PixArt)
    vae_scale_factor: int
    vae_scaling_factor: float
    vae_shift_factor: float | None
    text_encoders: tuple[TextEncoderSpec, ...]
    limits: GenerationLimits
    capabilities: Capabilities = Capabilities()
    precisions: dict[str, str] = field(default_factory=dict)  # component -> "fp32" | "fp16" | "int8" | "fp8"
    force_zeros_for_empty_prompt: bool = False  # SDXL: an empty negative prompt is zero embeddings
    guidance_embeds: bool = False  # Flux "dev": guidance_scale is a model input, not CFG
    patch_size: int = 1
    quantization: Quantization | None = None  # the denoiser's, when served from `dgate calibrate`
    # Image-to-video (SVD): the CLIP image encoder's input size and embedding width; 0 = none.
    image_encoder_size: int = 0
    image_embed_dim: int = 0
    # Partial images: latents -> RGB in [-1, 1] by one linear map, rows = latent channels + a bias row
    # (fitted to the VAE decoder at export; empty: previews are gray).
    preview_rgb: tuple[tuple[float, ...], ...] = ()
    format_version: int = FORMAT_VERSION

    @property
    def exported_components(self) -> tuple[str, ...]:
        image_encoder = ("image_encoder",) if self.image_encoder_size else ()
        return (*(e.component for e in self.text_encoders), *image_encoder, self.denoiser_component, "vae_decoder",
                "vae_encoder")

    def text_encoder(self, component: str) -> TextEncoderSpec:
        for encoder in self.text_encoders:
            if encoder.component == component:
                return encoder
        raise KeyError(f"{self.name} has no text encoder {component!r}")

    def precision(self, component: str) -> str:
        return self.precisions.get(component, "fp32")

    def latent_shape(self, num_images: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (num_images, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    # --- persistence ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PipelineSpec:
        data: dict[str, Any] = json.loads(text)
        version = data.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise ValueError(f"pipeline.json has format_version {version}; this D-Gate reads up to "
                             f"{FORMAT_VERSION}: upgrade dgate or re-export the pipeline")
        if version == 1:
            data = _migrate_v1(data)
        if version <= 2:
            data = _migrate_v2(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:  # added by a later minor change of the same version: safe to ignore
            logger.warning("pipeline.json: ignoring unknown keys %s", sorted(unknown))
        data = {key: value for key, value in data.items() if key in known}
        limits: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["limits"].items()}
        data["limits"] = GenerationLimits(**limits)
        data["capabilities"] = Capabilities(**data.get("capabilities", {}))
        data["text_encoders"] = tuple(TextEncoderSpec(**encoder) for encoder in data["text_encoders"])
        if data.get("quantization"):
            data["quantization"] = Quantization.from_dict(data["quantization"])
        data["preview_rgb"] = tuple(tuple(row) for row in data.get("preview_rgb", ()))
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> PipelineSpec:
        return cls.from_json(Path(path).read_text())


# Version 1 knew two layouts; their schedulers were the UNet (discrete-time) ones.
_V1_FAMILIES = {"unet": "sd", "dit": "pixart"}
_V1_SCHEDULERS = ("euler", "euler_a", "ddim", "dpm++", "pndm", DEFAULT_SCHEDULER)


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """The spine's pipeline.json (one text encoder, `family` unet|dit) in version 2's terms."""
    data = dict(data)
    t5 = data.pop("uses_attention_mask")
    length, hidden = data.pop("text_max_length"), data.pop("text_hidden_size")
    family = _V1_FAMILIES[data["family"]]
    data["family"] = family
    data["text_encoders"] = [asdict(TextEncoderSpec(
        component="text_encoder", tokenizer="tokenizer", vocab_size=0, max_length=length, variable_length=False,
        hidden_size=hidden, hidden_layer=-1, pooled_size=0, takes_attention_mask=t5, pad_token_id=0,
    ))]
    data["limits"] = dict(data["limits"]) | {
        "family": family, "schedulers": _V1_SCHEDULERS, "default_max_sequence_length": 0,
        "max_sequence_length": 0, "true_cfg": False,
    }
    data["format_version"] = 2
    return data


# Version 2's limits held these; `streams` (always false there) is the ensemble's, not the pipeline's.
_V2_CAPABILITIES = ("task", "edits", "inpaint_model", "precision")


def _migrate_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2's pipeline.json in version 3's terms: capabilities out of the limits."""
    data = dict(data)
    limits = dict(data["limits"])
    limits.pop("streams", None)
    data["capabilities"] = {key: limits.pop(key) for key in _V2_CAPABILITIES if key in limits}
    data["limits"] = limits
    data["format_version"] = FORMAT_VERSION
    return data
