"""Small helpers shared by D-Gate's Triton Python models (only importable inside Triton)."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.errors import InvalidRequestError, marked
from dgate.core.params import DenoiseParams
from dgate.core.tensors import VIDEO_INPUTS


class ModelArgs:
    """The `args` Triton passes to initialize(), parsed once."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.version_dir = Path(args["model_repository"]) / args["model_version"]
        self.parameters = {key: value["string_value"] for key, value in self.config.get("parameters", {}).items()}

    def parameter(self, key: str, default: str | None = None) -> str:
        if key in self.parameters:
            return self.parameters[key]
        if default is None:
            raise pb_utils.TritonModelException(f"{self.name}: config.pbtxt lacks parameter {key!r}")
        return default


def input_array(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def optional_array(request: Any, name: str) -> np.ndarray | None:
    """An optional input's array, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def input_scalar(request: Any, name: str) -> Any:
    value = input_array(request, name).reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def error_response(error: Exception) -> Any:
    """One failed request, without failing the others in the batch."""
    if isinstance(error, InvalidRequestError):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
            marked(error), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error),
                                                                                    pb_utils.TritonError.INTERNAL))


def denoise_params(request: Any, video: bool = False) -> DenoiseParams:
    """The request's DenoiseParams from the denoiser's inputs (named as the fields): every field without a
    default, and for a video the video inputs too; `strength` is read where edits are."""
    names = [f.name for f in fields(DenoiseParams) if f.default is MISSING and f.default_factory is MISSING]
    if video:
        names += [t.name for t in VIDEO_INPUTS]
    return DenoiseParams(**{name: input_scalar(request, name) for name in names})

