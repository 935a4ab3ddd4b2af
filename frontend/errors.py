"""The one OpenAI-shaped error type and the one place exceptions become HTTP answers.

Every error body is `{"error": {"message", "type", "param", "code"}}`, which the official `openai`
client turns into BadRequestError (400), NotFoundError (404), InternalServerError (>= 500)...
Routers raise; they never catch.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dgate.core.errors import InvalidRequestError
from dgate.frontend.engine import EngineError, EngineTimeout, ModelNotFound, ServiceUnavailable
from dgate.frontend.engine.errors import RequestCancelled

logger = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 5
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class OpenAIError(Exception):
    """An error answered as OpenAI does; `type` is OpenAI's category, `code` a stable machine string."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The inside of `{"error": ...}`: also what SSE and WebSocket error messages carry."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_validation_error(exc: RequestValidationError) -> OpenAIError:
    """pydantic's first error -> 400 naming the field (`param`) and what was received."""
    errors = exc.errors()
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidRequestError):  # a cross-field rule raised from a model validator
        return OpenAIError(400, cause.message, param=cause.param, code="invalid_value")
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ())[1:]]  # drop "body" / "query" / "path"
    param = ".".join(loc) or None
    if kind == "json_invalid":
        return OpenAIError(
            400,
            f"The request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
            code="invalid_json",
        )
    if kind == "model_attributes_type" and not loc and isinstance(first.get("input"), bytes):
        # Raw bytes: a body not labelled (nor sniffed, see middleware.py) as JSON, e.g. a form on a JSON route.
        return OpenAIError(
            400,
            "The request body is not JSON: this route reads a JSON object (application/json); forms are "
            "read by /v1/images/edits, /v1/images/variations and /v1/videos",
            code="invalid_json",
        )
    if kind == "extra_forbidden":
        return OpenAIError(
            400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        what = f"'{param}'" if param else "a JSON body"
        return OpenAIError(
            400, f"Missing required parameter: {what}", param=param, code="missing_required_parameter"
        )
    message = str(cause) if cause is not None else first.get("msg", "invalid value")
    if param and cause is None:
        message = f"{param}: {message} (got {_short(first.get('input'))})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return OpenAIError(400, message, param=param, code="invalid_value")


def from_exception(
    exc: Exception, *, retry_after_s: int = DEFAULT_RETRY_AFTER_S, request_id: str | None = None
) -> OpenAIError:
    """The single mapping from any exception to an OpenAI error."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return from_validation_error(exc)
    if isinstance(exc, InvalidRequestError):
        return OpenAIError(400, exc.message, param=exc.param, code="invalid_value")
    if isinstance(exc, ModelNotFound):
        return OpenAIError(404, exc.message, param="model", code="model_not_found")
    if isinstance(exc, RequestCancelled):  # by the model server (a deadline, a drain), not by this client
        return OpenAIError(
            503,
            exc.message,
            type="server_error",
            code="request_cancelled",
            headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(exc, ServiceUnavailable):
        return OpenAIError(
            503,
            exc.message,
            type="server_error",
            code="service_unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(exc, EngineTimeout):
        return OpenAIError(504, exc.message, type="server_error", code="timeout")
    if isinstance(exc, EngineError):
        # Its message is already fit for a client (triton_errors logged the backend's own text).
        logger.error("engine error: %s", exc.message, extra={"request_id": request_id})
        return OpenAIError(500, exc.message, type="server_error", code="engine_error")
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return OpenAIError(
            exc.status_code, str(exc.detail), type=kind, code=code, headers=dict(exc.headers or {})
        )
    # Anything else is a bug: the client gets a generic message, the log gets the traceback.
    logger.error("unhandled exception", exc_info=exc, extra={"request_id": request_id})
    return OpenAIError(
        500,
        "The server had an error while processing your request.",
        type="server_error",
        code="internal_error",
    )


def install_exception_handlers(app: FastAPI, *, retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> None:
    """Register the mapping for every exception type routers may raise (subclasses included)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        return from_exception(exc, retry_after_s=retry_after_s, request_id=request_id).response()

    for exc_type in (
        OpenAIError,
        RequestValidationError,
        InvalidRequestError,
        EngineError,
        StarletteHTTPException,
    ):
        app.add_exception_handler(exc_type, handle)


# The error answers of the /v1 routes, for the OpenAPI document (FastAPI's own 422 is never sent:
# validation errors are 400s).
_ERROR_ANSWERS = {
    "400": "Invalid request: the field is named in `param`",
    "401": "Missing or wrong API key (when keys are configured)",
    "404": "Unknown model, video or file",
    "413": "The request body is larger than DGATE_MAX_BODY_MB (forms: plus DGATE_MAX_UPLOAD_MB)",
    "429": "Over a rate limit or quota, or the queue is full: retry after `Retry-After` seconds",
    "500": "The server or the pipeline failed (the message carries the request id)",
    "503": "The model server is not ready or the request was cancelled there: retry after `Retry-After`",
}
_OPEN_ROUTES = ("/v1/files/",)  # unguessable expiring links, no key (frontend/auth.py)


def document_errors(app: FastAPI) -> None:
    """Make the app's OpenAPI document list the error answers the API really gives, in OpenAI's shape."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorResponse"] = {
            "title": "ErrorResponse", "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}},
        }
        answer = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                if not path.startswith("/v1/"):
                    continue
                for status, description in _ERROR_ANSWERS.items():
                    if status == "401" and path.startswith(_OPEN_ROUTES):
                        continue
                    responses.setdefault(status, {"description": description, **answer})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
