"""Server-Sent Events: the wire format, the response, and a work task whose events stream while it runs.

As OpenAI streams images (and the official client reads them):
- each event is `event: <type>\\ndata: <one-line JSON with the same "type">\\n\\n`; the client reads the
  JSON's `type` (it ignores the `event:` line) and raises `APIError` on an event carrying `error`;
- a failure after the response started is an `error` event, `{"type": "error", "error": {message,
  type, param, code}}` (the body a non-streamed answer would have had), and the stream ends;
- no `data: [DONE]`: OpenAI's image streams end with the response (the client stops at either);
- `: keep-alive` comments while nothing happens, so proxies keep the connection and a client that is
  gone is noticed even on servers that report disconnects only on a write.

A client that disconnects cancels the work: the response closes its event generator however it ends
(disconnect, server shutdown), and the generator's `pump` cancels the work's task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dgate.frontend.errors import OpenAIError

T = TypeVar("T")
R = TypeVar("R")

KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 10.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream


def sse_event(data: dict[str, Any]) -> bytes:
    """One event; its SSE name is the JSON's `type`."""
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def error_event(error: OpenAIError) -> bytes:
    return sse_event({"type": "error", "error": error.body()})


class EventStreamResponse(StreamingResponse):
    """`text/event-stream`, never cached; the event generator is closed however the response ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, headers=HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # a no-op once it has finished


@dataclass(frozen=True)
class Done(Generic[R]):
    value: R


_END = object()


async def pump(work: Callable[[Callable[[T], None]], Awaitable[R]], *,
               keepalive_s: float = KEEPALIVE_S) -> AsyncGenerator[T | Done[R] | None, None]:
    """Run `work(emit)` as a task; yield what it emits as it comes, None after `keepalive_s` without any,
    and at last `Done(its result)` (or raise its exception). Closing the generator cancels the task."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(work(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(_END))  # after everything it emitted
    try:
        while True:
            try:
                async with asyncio.timeout(keepalive_s):
                    item = await queue.get()
            except TimeoutError:
                yield None
                continue
            if item is _END:
                break
            yield item
        yield Done(task.result())
    finally:
        # Not awaited: this may run inside a cancelled scope (a disconnect), where an await would not return.
        task.cancel()


async def event_stream(work: Callable[[Callable[[bytes], None]], Awaitable[list[bytes]]], *,
                       on_error: Callable[[Exception], OpenAIError],
                       keepalive_s: float = KEEPALIVE_S) -> AsyncGenerator[bytes, None]:
    """The events `work(emit)` emits while it runs, then the events it returns; an exception becomes one
    `error` event (mapped by `on_error`) that ends the stream."""
    try:
        async with aclosing(pump(work, keepalive_s=keepalive_s)) as items:
            async for item in items:
                if item is None:
                    yield KEEPALIVE
                elif isinstance(item, Done):
                    for event in item.value:
                        yield event
                else:
                    yield item
    except Exception as exc:
        yield error_event(on_error(exc))
