"""Ensemble requests for tritonclient, and the diffusers reference they must match."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.tensors import infer_inputs

DEFAULTS: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "negative_prompt": "",
    "num_images": 1,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 0,
    "height": 64,
    "width": 64,
    "scheduler": "default",
    "max_sequence_length": 0,
    "true_cfg_scale": 1.0,
    "lora": "",
}


def ensemble_inputs(client_module: Any, dtypes: dict[str, str] | None = None, **overrides: Any) -> list[Any]:
    """One InferInput per ensemble input; `dtypes` overrides a datatype to send wrong ones on purpose."""
    return infer_inputs(client_module, DEFAULTS | overrides, dtypes)


@cache
def _pipeline(model_dir: Path) -> Any:
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(model_dir))


def reference_images(model_dir: Path, **overrides: Any) -> np.ndarray:
    """The diffusers pipeline's own output for the same request, as uint8 [N, H, W, 3]."""
    from dgate.reference import diffusers_images

    return diffusers_images(_pipeline(model_dir), DEFAULTS | overrides)
