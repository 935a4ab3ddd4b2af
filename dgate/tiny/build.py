"""The tiny pipelines by name: which are built by default, and saving one to disk."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTokenizer

from dgate.tiny.flux import build_flux, build_flux_schnell
from dgate.tiny.pixart import build_pixart
from dgate.tiny.sd import build_sd, build_sd_inpaint
from dgate.tiny.sd3 import build_sd3
from dgate.tiny.sdxl import build_sdxl
from dgate.tiny.tokenizers import write_bpe_files
from dgate.tiny.video import build_animatediff, build_svd

logger = logging.getLogger("dgate.tiny")  # the name the module had before it became a package

# What `build_tiny_pipelines` (and `dgate tiny`) build by default.
TINY_PIPELINES: tuple[str, ...] = ("tiny-sd", "tiny-pixart", "tiny-sdxl", "tiny-sd3", "tiny-flux",
                                   "tiny-animatediff", "tiny-svd")
# Everything `build_tiny_pipeline` can build by name: the defaults plus the Flux "schnell" variant.
ALL_TINY_PIPELINES: tuple[str, ...] = (*TINY_PIPELINES, "tiny-flux-schnell")
# Dedicated inpainting models (they make no text-to-image): built by name only, with build_tiny_pipeline.
INPAINT_TINY_PIPELINES: tuple[str, ...] = ("tiny-sd-inpaint",)

_BUILDERS: dict[str, Callable[[], Any]] = {
    "tiny-sd": build_sd,
    "tiny-pixart": build_pixart,
    "tiny-sdxl": build_sdxl,
    "tiny-sd3": build_sd3,
    "tiny-flux": build_flux,
    "tiny-animatediff": build_animatediff,
    "tiny-svd": build_svd,
    "tiny-flux-schnell": build_flux_schnell,
    "tiny-sd-inpaint": build_sd_inpaint,
}
assert tuple(_BUILDERS) == (*ALL_TINY_PIPELINES, *INPAINT_TINY_PIPELINES)


def build_tiny_pipeline(name: str, out_dir: Path) -> Path:
    """Build the tiny pipeline `name` (any of ALL_TINY_PIPELINES or INPAINT_TINY_PIPELINES), save it to
    `out_dir / name`, return that path."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline {name!r}; expected one of {', '.join(_BUILDERS)}")
    path = Path(out_dir) / name
    # Seed a forked RNG so building neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        pipe: Any = _BUILDERS[name]()  # a DiffusionPipeline; diffusers' annotations miss its methods
    pipe.save_pretrained(path, safe_serialization=True)
    for component, value in pipe.components.items():  # tokenizer, and tokenizer_2 where there is one
        if isinstance(value, CLIPTokenizer):
            write_bpe_files(value, path / component)
    logger.info("built %s at %s", name, path)
    return path


def build_tiny_pipelines(out_dir: Path, names: tuple[str, ...] = TINY_PIPELINES) -> list[Path]:
    """Build the tiny pipelines `names` (by default TINY_PIPELINES) under `out_dir`."""
    return [build_tiny_pipeline(name, out_dir) for name in names]
