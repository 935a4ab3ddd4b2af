"""A byte cap on every request body, enforced while it is read (plain ASGI, no buffering).

- A declared `Content-Length` past the cap is answered 413 at once, before the route runs.
- Otherwise the body is counted as it arrives (a chunked body, or one whose `Content-Length` lies), and
  the message that crosses the cap raises `BodyTooLarge` instead of reaching the route: nothing past the
  cap is ever held in memory. `BodyTooLarge` is a Starlette HTTPException, so FastAPI re-raises it from
  its own body parsing and the one error mapper answers 413 in OpenAI's shape (code `request_too_large`).
- `DGATE_MAX_BODY_MB` caps JSON (and any other) bodies; a form (multipart, or urlencoded: what the upload
  routes read) may carry `DGATE_MAX_UPLOAD_MB` (and 1 MB of fields) beyond it, so those routes' own 400
  naming the file comes first. curl's JSON labelled as a form is relabelled before this (middleware.py).
- It runs inside the auth middleware: a caller without a key gets its 401, not a 413.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgate.frontend.errors import from_exception

FORMS = (b"multipart/form-data", b"application/x-www-form-urlencoded")


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the {limit / 2**20:g} MB allowed "
                         "(DGATE_MAX_BODY_MB; forms also DGATE_MAX_UPLOAD_MB)")


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", ()) if key == name), None)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, form_extra_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.form_extra_bytes = form_extra_bytes

    def limit(self, scope: Scope) -> int:
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        return self.max_body_bytes + (self.form_extra_bytes if content_type in FORMS else 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = (_header(scope, b"content-length") or b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > limit:
            await from_exception(BodyTooLarge(limit)).response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
