"""Building ensemble requests with tritonclient, and the diffusers reference they must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.tensors import ENSEMBLE_INPUTS

DEFAULTS: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "negative_prompt": "",
    "num_images": 1,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 0,
    "height": 64,
    "width": 64,
    "scheduler": "euler",
}


def ensemble_inputs(client_module: Any, dtypes: dict[str, str] | None = None, **overrides: Any) -> list[Any]:
    """One InferInput per ensemble input; `dtypes` overrides a datatype to send wrong ones on purpose."""
    values = DEFAULTS | overrides
    inputs = []
    for tensor in ENSEMBLE_INPUTS:
        datatype = (dtypes or {}).get(tensor.name, tensor.client_dtype)
        value = values[tensor.name]
        if datatype == "BYTES":
            array = np.array([str(value).encode()], dtype=np.object_)
        else:
            array = np.array([value], dtype=client_module.triton_to_np_dtype(datatype))
        infer_input = client_module.InferInput(tensor.name, [1], datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def reference_images(model_dir: Path, **overrides: Any) -> np.ndarray:
    """The diffusers pipeline's own output for the same request, as uint8 [N, H, W, 3]."""
    import torch
    from diffusers import DiffusionPipeline

    from dgate.core.schedulers import build_scheduler

    values = DEFAULTS | overrides
    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    if values["scheduler"] != "default":
        pipe.scheduler = build_scheduler(values["scheduler"], dict(pipe.scheduler.config))
    extra = {"use_resolution_binning": False, "clean_caption": False} if "PixArt" in type(pipe).__name__ else {}
    images = pipe(
        values["prompt"],
        negative_prompt=values["negative_prompt"],
        num_images_per_prompt=values["num_images"],
        num_inference_steps=values["num_inference_steps"],
        guidance_scale=values["guidance_scale"],
        height=values["height"],
        width=values["width"],
        generator=torch.Generator().manual_seed(values["seed"]),
        output_type="pil",
        **extra,
    ).images
    return np.stack([np.asarray(image) for image in images])
