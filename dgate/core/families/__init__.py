"""The family adapters, keyed by the diffusers pipeline class they serve."""

from __future__ import annotations

from typing import Any

from dgate.core.families.animatediff import AnimateDiff
from dgate.core.families.base import Family
from dgate.core.families.flux import Flux
from dgate.core.families.pixart import PixArt
from dgate.core.families.sd import StableDiffusion
from dgate.core.families.sd3 import StableDiffusion3
from dgate.core.families.sd_inpaint import StableDiffusionInpaint
from dgate.core.families.sdxl import StableDiffusionXL
from dgate.core.families.svd import StableVideoDiffusion
from dgate.core.pipeline_spec import PipelineSpec

FAMILIES: dict[str, Family] = {f.name: f for f in (StableDiffusion(), StableDiffusionXL(), PixArt(),
                                                    StableDiffusion3(), Flux(), AnimateDiff(),
                                                    StableVideoDiffusion(), StableDiffusionInpaint())}
_BY_PIPELINE = {cls: family for family in FAMILIES.values() for cls in family.pipeline_classes}
SUPPORTED_PIPELINES = tuple(_BY_PIPELINE)


def family_for_pipeline(pipe: Any) -> Family:
    """The adapter for a loaded diffusers pipeline, from its class (its own model_index.json)."""
    name = type(pipe).__name__
    if name not in _BY_PIPELINE:
        raise ValueError(f"unsupported pipeline {name}; supported: {', '.join(SUPPORTED_PIPELINES)}")
    return _BY_PIPELINE[name]


def family_of(spec: PipelineSpec) -> Family:
    return FAMILIES[spec.family]


def spec_from_pipeline(pipe: Any, name: str, **options: Any) -> PipelineSpec:
    return family_for_pipeline(pipe).derive_spec(pipe, name, **options)
