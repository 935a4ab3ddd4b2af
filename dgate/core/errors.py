"""Errors shared by the Triton models, the CLIs and the frontend."""

from __future__ import annotations

import re

# Errors on Triton's gRPC stream carry a message but no status code: the denoisers mark a client's
# mistake with this prefix (and the param) so that the frontend can still answer it with a 400.
INVALID_MARK = "invalid request"
# The same for a request stopped by a cancellation (its client went away, a deadline, a drain).
CANCELLED_MARK = "request cancelled"


def marked(error: InvalidRequestError) -> str:
    return f"{INVALID_MARK} (param {error.param or ''}): {error.message}"


def unmarked(message: str) -> InvalidRequestError | None:
    """The InvalidRequestError a marked message stands for, or None."""
    match = re.search(re.escape(INVALID_MARK) + r" \(param ([^)]*)\): (.*)", message, re.S)
    return None if match is None else InvalidRequestError(match.group(2), match.group(1) or None)


def is_cancellation(message: str) -> bool:
    """Whether a backend's error message says that the request was cancelled (`RequestCancelled`)."""
    return CANCELLED_MARK in message


class InvalidRequestError(ValueError):
    """A request parameter is outside what the pipeline allows.

    `param` names the offending request field (OpenAI's error `param`), so every layer can
    report it the same way.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RequestCancelled(RuntimeError):
    """The request was cancelled while it ran; its message carries `CANCELLED_MARK`."""

    def __init__(self, message: str = CANCELLED_MARK) -> None:
        super().__init__(message if CANCELLED_MARK in message else f"{CANCELLED_MARK}: {message}")


class ExportError(RuntimeError):
    """Export could not produce a faithful model (e.g. ONNX differs from PyTorch)."""
