"""Small helpers shared by D-Gate's Triton Python models (only importable inside Triton)."""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.errors import InvalidRequestError, RequestCancelled, marked
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


logger = logging.getLogger("dgate.model_repository")


def log(level: int, message: str) -> None:
    """Into Triton's own log through the stub's pb_utils.Logger where it has one, else Python's logging."""
    triton_logger = getattr(pb_utils, "Logger", None)
    if triton_logger is None:
        logger.log(level, message)
    elif level >= logging.ERROR:
        triton_logger.log_error(message)
    elif level >= logging.WARNING:
        triton_logger.log_warn(message)
    else:
        triton_logger.log_info(message)


def request_id_of(request: Any) -> str:
    """The Triton request id: the frontend sends its own (x-request-id), so the two logs join on it."""
    try:
        return str(request.request_id()) if request is not None else ""
    except Exception:  # a stub without it: the log line still says what failed
        return ""


def error_response(error: Exception, request: Any = None, model: str = "") -> Any:
    """One failed request, without failing the others in the batch; logged with its request id (a
    client's mistake and a cancellation at info, anything else at error with its traceback)."""
    where = f"{model or 'model'} request {request_id_of(request) or '-'}"
    if isinstance(error, InvalidRequestError):
        log(logging.INFO, f"{where}: refused ({error.param or '-'}): {error.message}")
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
            marked(error), pb_utils.TritonError.INVALID_ARG))
    if isinstance(error, RequestCancelled):
        log(logging.INFO, f"{where}: {error}")
        code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error), code))
    log(logging.ERROR, f"{where}: failed: {''.join(traceback.format_exception(error)).rstrip()}")
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error),
                                                                                    pb_utils.TritonError.INTERNAL))


def denoise_params(request: Any, video: bool = False) -> DenoiseParams:
    """The request's DenoiseParams from the denoiser's inputs (named as the fields): every field without a
    default, and for a video the video inputs too; `strength` is read where edits are."""
    names = [f.name for f in fields(DenoiseParams) if f.default is MISSING and f.default_factory is MISSING]
    if video:
        names += [t.name for t in VIDEO_INPUTS]
    return DenoiseParams(**{name: input_scalar(request, name) for name in names})

