"""Errors shared by the Triton models, the CLIs and the frontend."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request parameter is outside what the pipeline allows.

    `param` names the offending request field (OpenAI's error `param`), so every layer can
    report it the same way.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ExportError(RuntimeError):
    """Export could not produce a faithful model (e.g. ONNX differs from PyTorch)."""
