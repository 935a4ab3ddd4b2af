"""Per-request plumbing as plain ASGI (no BaseHTTPMiddleware buffering): request id, one JSON log
line, metrics, curl's form label on JSON bodies, and the last-resort conversion of unexpected
exceptions into an OpenAI 500."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgate.frontend.errors import from_exception
from dgate.frontend.metrics import Metrics
from dgate.frontend.request_id import REQUEST_ID

logger = logging.getLogger("dgate.frontend.access")

REQUEST_ID_HEADER = "x-request-id"
# A client's id is echoed into headers and logs: accept only short, printable ids.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


FORM_URLENCODED = b"application/x-www-form-urlencoded"
# A urlencoded body is read this far to see whether it is JSON; past it, it is left a form.
MAX_RELABELLED_BYTES = 4 << 20


def _is_urlencoded(scope: Scope) -> bool:
    return any(k == b"content-type" and v.split(b";")[0].strip().lower() == FORM_URLENCODED
               for k, v in scope.get("headers", ()))


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


async def _json_for_curl_forms(scope: Scope, receive: Receive) -> Receive:
    """`curl -d '{...}'` sends JSON labelled as a urlencoded form: such a body is relabelled JSON when it
    parses as JSON, and only then; a real form (`requests.post(url, data={...})`) keeps its label, for the
    routes that read forms. The body read to decide is handed on unchanged, then the rest of the stream."""
    if not _is_urlencoded(scope):
        return receive
    messages: deque[Message] = deque()
    size, complete = 0, False
    while size <= MAX_RELABELLED_BYTES:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            complete = True
            break
    if complete and _is_json(b"".join(message.get("body", b"") for message in messages)):
        scope["headers"] = [(k, b"application/json" if k == b"content-type" else v) for k, v in scope["headers"]]

    async def replay() -> Message:
        return messages.popleft() if messages else await receive()

    return replay


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)  # the Triton engine sends it on as Triton's request id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            receive = await _json_for_curl_forms(scope, receive)
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # handlers cover every expected error; this is a bug or a crash
            if started:
                logger.error(
                    "exception after the response started", exc_info=exc, extra={"request_id": request_id}
                )
            else:
                await from_exception(exc, request_id=request_id).response()(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, seconds)
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 2),
                    "request_id": request_id,
                },
            )
