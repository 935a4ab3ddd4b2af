"""The id of the HTTP request being served (x-request-id), for code that has no `Request` at hand.

The middleware sets it for each request; the Triton engine sends it on as Triton's request id and
logs under it, so the frontend's log and Triton's join on one id.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("dgate_request_id", default=None)
