"""tritonclient's exceptions -> the engine's typed errors (or a client's InvalidRequestError)."""

from __future__ import annotations

import re

from tritonclient.utils import InferenceServerException

from dgate.core.errors import InvalidRequestError, unmarked
from dgate.frontend.engine.errors import EngineError, EngineTimeout, ModelNotFound, ServiceUnavailable


def _status(exc: InferenceServerException) -> str:
    return (exc.status() or "").removeprefix("StatusCode.")


def map_triton_error(exc: InferenceServerException, name: str | None = None) -> EngineError | InvalidRequestError:
    """tritonclient's exception -> the typed error the HTTP layer maps to a status code."""
    status, message = _status(exc), exc.message() or str(exc)
    invalid = unmarked(message)
    if invalid is not None:  # the pipeline's own checks (tokenizer, denoiser) refused a value: a 400
        return invalid
    if name is not None and (status == "NOT_FOUND" or "is not found" in message):
        return ModelNotFound(name)
    if status == "INVALID_ARGUMENT":
        # The pipeline's own checks (tokenizer, denoiser) refused a value: the client's fault, a 400.
        return InvalidRequestError(re.sub(r"^(\[request id: [^\]]*\] )?in ensemble '[^']*', ", "", message))
    if status == "DEADLINE_EXCEEDED":
        return EngineTimeout(f"Triton did not answer in time: {message}")
    # UNAVAILABLE covers both "connection refused" and a model that is loading/unloaded
    # ("has no available versions"); both go away by retrying later.
    if status == "UNAVAILABLE" or "is not ready" in message or "no available versions" in message:
        return ServiceUnavailable(f"Triton is not available: {message}")
    return EngineError(message)
