"""The base pipeline: loading it (one code path for tiny test pipelines and real checkpoints) and turning
captions into the UNet's conditioning the way its own `__call__` does, so training matches inference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The pipelines whose denoiser is a UNet2DConditionModel with CLIP text encoders: their LoRA files are
# what `load_lora_weights` of the same class reads back.
SUPPORTED_PIPELINES: dict[str, str] = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


class UnsupportedPipelineError(ValueError):
    """The base model is a pipeline class this trainer does not know how to condition."""


def _check_class(class_name: str, model: str) -> str:
    if class_name not in SUPPORTED_PIPELINES:
        raise UnsupportedPipelineError(
            f"{model} is a {class_name}; finetuning supports {', '.join(SUPPORTED_PIPELINES)} only")
    return SUPPORTED_PIPELINES[class_name]


def load_pipeline(model: str) -> tuple[Any, str]:
    """`DiffusionPipeline.from_pretrained(model)` and its family ("sd" or "sdxl"). The class is checked
    from model_index.json first, so an unsupported checkpoint is refused before its weights load."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(model).get("_class_name", "?")
    family = _check_class(class_name, model)
    # Class images come from this pipeline: a safety checker would blank some of them, and it is not
    # part of what is trained.
    extra: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False} if family == "sd" else {}
    pipe = DiffusionPipeline.from_pretrained(model, **extra)  # FP32; the trainer casts for mixed precision
    _check_class(type(pipe).__name__, model)
    pipe.set_progress_bar_config(disable=True)
    return pipe, family


def text_encoders(pipe: Any, family: str) -> list[torch.nn.Module]:
    return [pipe.text_encoder] if family == "sd" else [pipe.text_encoder, pipe.text_encoder_2]


def _tokenizers(pipe: Any, family: str) -> list[Any]:
    return [pipe.tokenizer] if family == "sd" else [pipe.tokenizer, pipe.tokenizer_2]


@dataclass
class Conditioning:
    hidden_states: torch.Tensor  # encoder_hidden_states
    added: dict[str, torch.Tensor] | None  # SDXL's added_cond_kwargs (text_embeds, time_ids)

    def repeat(self, batch: int) -> Conditioning:
        """The same conditioning for `batch` examples (one prompt for a whole DreamBooth batch)."""
        added = None if self.added is None else {k: v.expand(batch, *v.shape[1:]) for k, v in self.added.items()}
        return Conditioning(self.hidden_states.expand(batch, *self.hidden_states.shape[1:]), added)


def tokenize(pipe: Any, family: str, captions: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded to the tokenizer's length as the pipelines pad them."""
    return [tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids for tokenizer in _tokenizers(pipe, family)]


def encode(pipe: Any, family: str, input_ids: list[torch.Tensor], device: torch.device,
           original_sizes: list[tuple[int, int]] | None = None,
           crop_top_lefts: list[tuple[int, int]] | None = None, resolution: int = 0) -> Conditioning:
    """The UNet's conditioning for tokenized captions, as StableDiffusion(XL)Pipeline.encode_prompt
    computes it with clip_skip=None; SDXL also gets its size micro-conditioning from each image's
    original size and crop."""
    encoders = text_encoders(pipe, family)
    if family == "sd":
        return Conditioning(encoders[0](input_ids[0].to(device))[0], None)
    states, pooled = [], None
    for encoder, ids in zip(encoders, input_ids, strict=True):
        output = encoder(ids.to(device), output_hidden_states=True)
        pooled = output[0]  # the last encoder's (text_encoder_2's) projected pooled output is the one kept
        states.append(output.hidden_states[-2])
    assert pooled is not None
    batch = pooled.shape[0]
    sizes = original_sizes or [(resolution, resolution)] * batch
    crops = crop_top_lefts or [(0, 0)] * batch
    time_ids = torch.tensor([[*size, *crop, resolution, resolution] for size, crop in zip(sizes, crops, strict=True)],
                            dtype=pooled.dtype, device=device)
    return Conditioning(torch.cat(states, dim=-1), {"text_embeds": pooled, "time_ids": time_ids})
