"""tritonclient's exceptions -> the engine's typed errors (or a client's InvalidRequestError).

Only a client's own mistake keeps the backend's words: any other failure reaches the client as a
generic message with the request id, and its full text (Triton's, ONNX Runtime's: paths, shapes)
goes to the log under that id.
"""

from __future__ import annotations

import logging
import re

from tritonclient.utils import InferenceServerException

from dgate.core.errors import InvalidRequestError, is_cancellation, unmarked
from dgate.frontend.engine.errors import (
    EngineError,
    EngineTimeout,
    ModelNotFound,
    RequestCancelled,
    ServiceUnavailable,
)

logger = logging.getLogger(__name__)

# Triton's prefixes on a message: its request id, and the ensemble a step failed in.
_PREFIXES = re.compile(r"^(\[request id: [^\]]*\] )?(in ensemble '[^']*', )?")
# "Request for unknown model: 'x' is not found", "Model 'x' is not ready", "model 'x' has no available versions"
_MODEL_NAMED = re.compile(r"\bmodel:? '([^']+)'", re.I)
_MISSING = ("is not found", "is not ready", "no available versions", "unknown model")
# Triton's own INVALID_ARG texts name the input, and the request's inputs are named as its fields.
_INPUT_NAMED = re.compile(r"\binput '([A-Za-z_][A-Za-z0-9_]*)'")


def _status(exc: InferenceServerException) -> str:
    return (exc.status() or "").removeprefix("StatusCode.")


def failure_message(name: str | None, request_id: str | None) -> str:
    """What a client reads for a failure that is not its own: no backend text."""
    pipeline = f"pipeline '{name}'" if name else "model server"
    return (f"The {pipeline} failed while generating (request id {request_id or 'unknown'}); "
            "the server log has the details")


def map_triton_error(exc: InferenceServerException, name: str | None = None,
                     request_id: str | None = None) -> EngineError | InvalidRequestError:
    """tritonclient's exception -> the typed error the HTTP layer maps to a status code.

    `name`: the pipeline asked; `request_id`: the id the request carried to Triton, for the log."""
    status, message = _status(exc), exc.message() or str(exc)
    invalid = unmarked(message)
    if invalid is not None:  # the pipeline's own checks (tokenizer, denoiser) refused a value: a 400
        return invalid
    if status == "CANCELLED" or is_cancellation(message):
        logger.info("Triton cancelled request %s: %s", request_id, message, extra={"request_id": request_id})
        return RequestCancelled("The request was cancelled in the model server "
                                f"(request id {request_id or 'unknown'}); retry it")
    if any(text in message for text in _MISSING):
        missing = [model for model in _MODEL_NAMED.findall(message) if model != name]
        if name is not None and missing:  # a component of the pipeline (BLS, ensemble step): not loaded
            logger.warning("pipeline %s: component %s is not loaded: %s", name, missing[0], message,
                           extra={"request_id": request_id})
            return ServiceUnavailable(f"A component of '{name}' ({missing[0]}) is not loaded")
    if name is not None and (status == "NOT_FOUND" or "is not found" in message):
        return ModelNotFound(name)
    if status == "INVALID_ARGUMENT":
        # Triton's own checks (an input's shape or type) refused the request: the client's fault, a 400.
        text = _PREFIXES.sub("", message)
        found = _INPUT_NAMED.search(text)
        return InvalidRequestError(text, found.group(1) if found else None)
    if status == "DEADLINE_EXCEEDED":
        return EngineTimeout(f"Triton did not answer in time: {message}")
    # UNAVAILABLE covers both "connection refused" and a model that is loading/unloaded
    # ("has no available versions"); both go away by retrying later.
    if status == "UNAVAILABLE" or "is not ready" in message or "no available versions" in message:
        return ServiceUnavailable(f"Triton is not available: {message}")
    logger.error("Triton failed request %s (%s, %s): %s", request_id, name, status or "no status", message,
                 extra={"request_id": request_id})
    return EngineError(failure_message(name, request_id))
