"""`GET /`: the playground, one hand-written page over the public API (frontend/static/).

Only the files listed in `STATIC_FILES` are served, read from the package, so no request path ever
reaches the file system. The page loads nothing from elsewhere, and its Content-Security-Policy
says so: scripts, styles and connections to this origin only; images also from data:/blob: URLs
(the generated images arrive base64-encoded, the edit upload is previewed from a blob).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from dgate.frontend.errors import OpenAIError

router = APIRouter(tags=["playground"], include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
STATIC_FILES = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# no-cache: the browser revalidates, so a new deployment's page is never mixed with an old script.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@router.get("/")
async def page() -> Response:
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={**HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise OpenAIError(404, f"No such file: '/static/{name}'", code="not_found")
    return Response(_read(name), media_type=STATIC_FILES[name], headers=HEADERS)
