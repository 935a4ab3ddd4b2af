"""Cancelling a request that is running inside an ensemble step.

Triton (2.51) checks an ensemble request's cancellation only between steps: the decoupled video
denoiser, a step that runs for seconds to minutes, never sees `request.is_cancelled()` turn true
(triton-inference-server/server#6739). So a client that gives up also asks the repository's
`dgate_cancel` model to post the request id on this board, and the denoiser checks the board every
step. The board is a directory shared by the Python-backend stubs of one tritonserver (its pid names
it), one empty file per cancelled request id; the denoiser removes its mark when it ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

CANCEL_DIR_ENV = "DGATE_CANCEL_DIR"
# The request parameter that carries the client's deadline (unix time, ms) into Triton: the ensemble
# forwards request parameters to its steps (Triton >= 23.10), so the denoiser stops at the first step
# boundary past it, whether or not the frontend's own cancellation arrives.
DEADLINE_PARAMETER = "dgate_deadline_ms"
STALE_S = 3600.0  # marks of requests that never ran (or a crashed denoiser) are swept after this


def board_directory() -> Path:
    """DGATE_CANCEL_DIR, else one directory per tritonserver: a stub's parent process is the server."""
    configured = os.environ.get(CANCEL_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"dgate-cancel-{os.getppid()}"


class CancellationBoard:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or board_directory()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _mark(self, request_id: str) -> Path:
        # Hashed: a request id is any client string, a file name is not.
        return self.directory / hashlib.sha256(request_id.encode()).hexdigest()[:40]

    def cancel(self, request_id: str) -> None:
        self._mark(request_id).touch()
        self.sweep()

    def is_cancelled(self, request_id: str) -> bool:
        return bool(request_id) and self._mark(request_id).exists()

    def clear(self, request_id: str) -> None:
        self._mark(request_id).unlink(missing_ok=True)

    def sweep(self, max_age_s: float = STALE_S) -> None:
        cutoff = time.time() - max_age_s
        for mark in self.directory.iterdir():
            try:
                if mark.stat().st_mtime < cutoff:
                    mark.unlink(missing_ok=True)
            except FileNotFoundError:  # removed by its denoiser meanwhile
                pass


def deadline_of(parameters: str | None) -> float | None:
    """The deadline (unix seconds) in a request's parameters (python_backend's `request.parameters()`,
    a JSON object), or None when it carries none."""
    try:
        value = json.loads(parameters or "{}").get(DEADLINE_PARAMETER)
    except (ValueError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value / 1000.0
