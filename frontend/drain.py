"""Graceful drain on SIGTERM: stop taking work, let the work in flight finish, then exit.

On the first SIGTERM (Kubernetes' pod termination, `dgate serve` stopped by its supervisor) the
frontend keeps its socket open but answers every new request with 503 `shutting_down` (and `/ready`
with 503, so load balancers stop sending), lets the requests and WebSockets in flight finish for up
to `drain_grace_s`, and only then lets uvicorn shut down: the lifespan's end requeues this replica's
running video jobs (frontend/video/jobs.py releases their leases) and `dgate serve` stops Triton.
A second SIGTERM, or SIGINT (Ctrl-C), stops at once as uvicorn does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from dgate.frontend.errors import OpenAIError

logger = logging.getLogger(__name__)

# Answered while draining too: liveness and the scrape (the process is alive and its counts are real).
ALWAYS_OPEN = frozenset({"/health", "/metrics"})
# After the drain, uvicorn waits this long for connections to close before cancelling what is left.
CLOSE_CONNECTIONS_S = 5


class Lifecycle:
    """Requests in flight and whether the replica is draining; one per app, on the event loop."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False when the timeout came first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def shutting_down(retry_after_s: int) -> OpenAIError:
    return OpenAIError(503, "The server is shutting down; retry on another replica", type="server_error",
                       code="shutting_down", headers={"Retry-After": str(retry_after_s)})


class DrainMiddleware:
    """Counts the requests in flight; while draining, refuses new ones (503, WebSocket close 1013)."""

    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle, retry_after_s: int) -> None:
        self.app, self.lifecycle, self.retry_after_s = app, lifecycle, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in ALWAYS_OPEN:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1013, "reason": "shutting down"})  # try again later
            else:
                await shutting_down(self.retry_after_s).response()(scope, receive, send)
            return
        self.lifecycle.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the shutdown on the first SIGTERM."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self.lifecycle, self.grace_s = lifecycle, grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.lifecycle.draining and self._loop is not None:
            self.lifecycle.draining = True  # from here on, new requests get 503
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        started = time.monotonic()
        logger.info("SIGTERM: draining %d request(s) in flight (grace %.0f s)", self.lifecycle.in_flight,
                    self.grace_s)
        finished = await self.lifecycle.wait_idle(self.grace_s)
        logger.info("drain %s after %.2f s; shutting down", "complete" if finished else
                    f"cut short with {self.lifecycle.in_flight} request(s) left", time.monotonic() - started)
        self.should_exit = True
