"""Stop the work of a request whose HTTP client went away.

Starlette does not cancel a handler when its client disconnects: a generation would run to the end
in Triton for nobody. `unless_disconnected` runs the work as a task and cancels it when the client
is gone; the engine then cancels the request in Triton (through dgate_cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from dgate.frontend.errors import OpenAIError

T = TypeVar("T")
POLL_S = 0.1


async def unless_disconnected(request: Request, work: Awaitable[T], poll_s: float = POLL_S) -> T:
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                # nginx's 499: nobody reads it, but the access log and metrics say what happened.
                raise OpenAIError(499, "the client closed the request", code="client_closed_request")
    finally:
        if not task.done():  # the handler itself was cancelled (server shutdown)
            task.cancel()
