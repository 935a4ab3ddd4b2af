"""The errors an engine raises; `dgate.frontend.errors` maps each to an HTTP status."""

from __future__ import annotations


class EngineError(RuntimeError):
    """The backend failed a request; the message is shown to the client, so never the backend's own text (logged)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServiceUnavailable(EngineError):
    """The backend is unreachable, not ready, or has no pipeline loaded: retrying later may work."""


class EngineTimeout(EngineError):
    """The backend did not answer within the request deadline."""


class ModelNotFound(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model '{name}' does not exist or is not a D-Gate pipeline")
        self.name = name


class RequestCancelled(ServiceUnavailable):
    """The backend cancelled the request while it ran (not at this client's asking: a deadline, a drain)."""
