"""API keys: who may call the API, with which role, and whose video jobs are whose.

Keys come from `DGATE_API_KEYS_FILE` (one per line, stored hashed) and `DGATE_API_KEYS` (comma-separated
plain keys, for simple setups). A line of the file is

    <sha256 hex | scrypt$N$r$p$<salt hex>$<hash hex>> [name=<name>] [role=admin|user]
        [requests_per_minute=<n>] [in_flight=<n>] [megapixels_per_day=<x>]

(`#` starts a comment; `dgate keys hash` prints a line). An entry of `DGATE_API_KEYS` is the same with
the plain key in place of the hash. The role defaults to `user`; the quota fields are carried on the
key for the quota layer. With no key configured at all, auth is off and the frontend says so loudly at
start.

`AuthMiddleware` checks every request before a byte of its body is read (a dependency would come after
FastAPI parsed a JSON body): `Authorization: Bearer <key>` on HTTP; on the WebSocket also a
`Sec-WebSocket-Protocol` entry `openai-insecure-api-key.<key>` (OpenAI Realtime's browser convention) or an
`api_key` query parameter, since browsers cannot set headers there. Open without a key: `/health`,
`/ready`, `/metrics`, the playground page and its static files, the API docs, and `/v1/files/{id}` (the
`url` images: unguessable, expiring capability links that an `<img src>` can load). Keys are compared as
SHA-256 digests with `hmac.compare_digest` against every entry (no early exit), scrypt entries by
recomputing the hash (off the event loop; a verified key is remembered by its digest).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, cast
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from dgate.frontend.errors import OpenAIError

logger = logging.getLogger(__name__)

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
WS_KEY_PROTOCOL = "openai-insecure-api-key."  # a subprotocol entry that carries the key
WS_PROTOCOL = "dgate"  # offered beside it, the server answers this one and never echoes the key
WS_QUERY_PARAM = "api_key"
WS_CLIENT_ERROR = 1008  # policy violation, as /v1/ws/generate closes on a client's error
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, tens of milliseconds: the parameters OWASP lists
_VERIFIED_CACHE = 1024  # scrypt keys remembered (by SHA-256 digest) once verified


class KeyFileError(ValueError):
    """A malformed key entry: the frontend refuses to start rather than guess."""


@dataclass(frozen=True)
class Quota:
    """Per-key limits (unset: none); enforced by the quota layer, only carried here."""

    requests_per_minute: int | None = None
    in_flight: int | None = None
    megapixels_per_day: float | None = None


@dataclass(frozen=True)
class ApiKey:
    """A verified caller. `id` is derived from the stored hash (never the key): it owns video jobs."""

    id: str
    name: str | None = None
    role: Role = "user"
    quota: Quota = field(default_factory=Quota)

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, key: bytes) -> bool:
        computed = hashlib.scrypt(key, salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=len(self.digest),
                                  maxmem=256 * self.n * self.r * self.p)
        return hmac.compare_digest(computed, self.digest)


@dataclass(frozen=True)
class KeyEntry:
    key: ApiKey
    sha256: bytes | None = None
    scrypt: _Scrypt | None = None


# -- hashing (also `dgate keys hash`) --------------------------------------------------------------------


def new_key() -> str:
    """A random key of 256 bits in URL-safe characters (fit for a header, a query and a subprotocol)."""
    return "dg-" + secrets.token_urlsafe(32)


def sha256_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def scrypt_hash(key: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * n * r * p)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def key_line(hashed: str, *, name: str | None = None, role: Role = "user") -> str:
    """One line of the keys file."""
    return " ".join([hashed, *([f"name={name}"] if name else []), f"role={role}"])


# -- parsing ---------------------------------------------------------------------------------------------


def _quota_value(option: str, text: str, where: str) -> int | float:
    try:
        value = float(text) if option == "megapixels_per_day" else int(text)
    except ValueError:
        raise KeyFileError(f"{where}: {option}={text!r} is not a number") from None
    if value <= 0:
        raise KeyFileError(f"{where}: {option} must be positive")
    return value


def _parse_scrypt(text: str, where: str) -> _Scrypt:
    parts = text.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(part) for part in parts[1:4])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or len(digest) < 16:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"{where}: not scrypt$N$r$p$<salt hex>$<hash hex> (N a power of 2)") from None
    return _Scrypt(n, r, p, salt, digest)


def _key_id(verifier: str) -> str:
    return "key_" + hashlib.sha256(b"dgate-key-id:" + verifier.encode()).hexdigest()[:24]


def parse_entry(text: str, where: str, *, plain: bool = False) -> KeyEntry:
    """One entry: a hash (or, `plain`, the key itself) and its `name=`, `role=` and quota options."""
    first, *options = text.split()
    sha256: bytes | None = None
    scrypt: _Scrypt | None = None
    if plain:
        sha256 = hashlib.sha256(first.encode()).digest()
    elif first.startswith("scrypt$"):
        scrypt = _parse_scrypt(first, where)
    else:
        if len(first) != 64 or first.strip("0123456789abcdefABCDEF"):
            raise KeyFileError(f"{where}: expected a SHA-256 hex digest (64 characters) or scrypt$...; "
                               "`dgate keys hash` prints a line")
        sha256 = bytes.fromhex(first)
    values: dict[str, str] = {}
    for option in options:
        field_name, sep, value = option.partition("=")
        if not sep or not value:
            raise KeyFileError(f"{where}: option {option!r} is not name=value")
        if field_name not in ("name", "role", *Quota.__dataclass_fields__):
            raise KeyFileError(f"{where}: unknown option {field_name!r} (name, role, requests_per_minute, "
                               "in_flight, megapixels_per_day)")
        if field_name in values:
            raise KeyFileError(f"{where}: {field_name} is given twice")
        values[field_name] = value
    role = values.pop("role", "user")
    if role not in ROLES:
        raise KeyFileError(f"{where}: role={role!r}: expected admin or user")
    name = values.pop("name") if "name" in values else None
    quota = Quota(**{option: _quota_value(option, value, where) for option, value in values.items()})  # type: ignore[arg-type]
    verifier = sha256.hex() if sha256 is not None else first
    return KeyEntry(ApiKey(_key_id(verifier), name, role, quota), sha256, scrypt)


def parse_keys_file(text: str, source: str = "keys file") -> list[KeyEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if content:
            entries.append(parse_entry(content, f"{source}:{number}"))
    return entries


def parse_plain_keys(text: str) -> list[KeyEntry]:
    """`DGATE_API_KEYS`: comma-separated `<key>[ name=..][ role=..]` (a blank entry is skipped)."""
    return [parse_entry(item.strip(), f"DGATE_API_KEYS entry {index}", plain=True)
            for index, item in enumerate(text.split(","), 1) if item.strip()]


# -- verification ----------------------------------------------------------------------------------------


class KeyRing:
    """Every configured key; empty means auth is off."""

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        entries = list(entries)
        ids = [entry.key.id for entry in entries]
        if len(set(ids)) != len(ids):
            raise KeyFileError("the same key is configured twice")
        names = [entry.key.name for entry in entries if entry.key.name]
        if len(set(names)) != len(names):
            raise KeyFileError("two keys have the same name=")
        self._sha256 = [(entry.sha256, entry.key) for entry in entries if entry.sha256 is not None]
        self._scrypt = [(entry.scrypt, entry.key) for entry in entries if entry.scrypt is not None]
        self._verified: OrderedDict[bytes, ApiKey] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self._sha256 or self._scrypt)

    def __len__(self) -> int:
        return len(self._sha256) + len(self._scrypt)

    async def verify(self, key: str) -> ApiKey | None:
        """The key's entry, or None. Every SHA-256 entry is compared, so the time says nothing of which."""
        raw = key.encode()
        digest = hashlib.sha256(raw).digest()
        found = None
        for stored, entry in self._sha256:
            if hmac.compare_digest(digest, stored):
                found = entry
        if found is not None or not self._scrypt:
            return found
        if (cached := self._verified.get(digest)) is not None:
            return cached
        found = await asyncio.to_thread(self._scrypt_match, raw)
        if found is not None:
            self._verified[digest] = found
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return found

    def _scrypt_match(self, raw: bytes) -> ApiKey | None:
        found = None
        for stored, entry in self._scrypt:
            if stored.matches(raw):
                found = entry
        return found


def load_keys(api_keys_file: str | None, api_keys: str | None) -> KeyRing:
    entries: list[KeyEntry] = []
    if api_keys_file:
        path = Path(api_keys_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyFileError(f"DGATE_API_KEYS_FILE {path}: {exc.strerror or exc}") from exc
        entries += parse_keys_file(text, str(path))
        if not entries:
            raise KeyFileError(f"DGATE_API_KEYS_FILE {path} holds no key: auth would be off")
    if api_keys:
        entries += parse_plain_keys(api_keys)
    return KeyRing(entries)


def log_auth_mode(keys: KeyRing) -> None:
    if keys.enabled:
        logger.info("API keys required: %d key(s) configured", len(keys))
        return
    logger.warning(
        "!!! AUTH IS OFF: no API key is configured (DGATE_API_KEYS_FILE, DGATE_API_KEYS). Anyone who reaches "
        "this port can generate, manage LoRA adapters and read or delete every video. Configure keys before "
        "exposing it (`dgate keys hash --new`). !!!"
    )


# -- the HTTP and WebSocket side -------------------------------------------------------------------------


def missing_key() -> OpenAIError:
    return OpenAIError(401, "You didn't provide an API key. Send it as `Authorization: Bearer <key>` (on the "
                       "WebSocket also as the subprotocol `openai-insecure-api-key.<key>` or `?api_key=`).",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def incorrect_key() -> OpenAIError:
    return OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


def not_admin() -> OpenAIError:
    return OpenAIError(403, "This route needs an API key with the admin role.", code="insufficient_permissions")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return cast(bytes, value).decode("latin-1")
    return None


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = (_header(scope, b"authorization") or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: the Bearer header; on a WebSocket also the subprotocol or query token."""
    if (token := _bearer(scope)) is not None or scope["type"] != "websocket":
        return token
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(WS_KEY_PROTOCOL) and len(protocol) > len(WS_KEY_PROTOCOL):
            return cast(str, protocol[len(WS_KEY_PROTOCOL):])
    query = cast(bytes, scope.get("query_string", b"")).decode("latin-1")
    for name, value in parse_qsl(query):
        if name == WS_QUERY_PARAM and value:
            return value
    return None


def ws_subprotocol(scope: Scope) -> str | None:
    """What the server answers to the offered subprotocols: `dgate` if offered; else the key's own entry
    (a browser fails a handshake whose offer got no answer); else none."""
    offered: Sequence[str] = scope.get("subprotocols", ())
    if WS_PROTOCOL in offered:
        return WS_PROTOCOL
    return next((p for p in offered if p.startswith(WS_KEY_PROTOCOL)), None)


class AuthMiddleware:
    """Every HTTP request and WebSocket outside `open_paths` (exact) and `open_prefixes` needs a key; the
    verified `ApiKey` goes to `scope["state"]["api_key"]`. Plain ASGI: refused before the body is read."""

    def __init__(self, app: ASGIApp, keys: KeyRing, open_paths: Iterable[str] = (),
                 open_prefixes: Iterable[str] = ()) -> None:
        self.app, self.keys = app, keys
        self.open_paths, self.open_prefixes = frozenset(open_paths), tuple(open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys.enabled or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = presented_key(scope)
        key = None if token is None else await self.keys.verify(token)
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        error = missing_key() if token is None else incorrect_key()
        if scope["type"] == "http":
            await error.response()(scope, receive, send)
        else:
            await _refuse_websocket(scope, receive, send, error)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, error: OpenAIError) -> None:
    """The WebSocket's own error protocol (browsers cannot read a refused handshake's status): accept,
    send `{"type": "error", "error": {...}}`, close with 1008."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": ws_subprotocol(scope), "headers": []})
    await send({"type": "websocket.send", "text": json.dumps({"type": "error", "error": error.body()})})
    await send({"type": "websocket.close", "code": WS_CLIENT_ERROR, "reason": error.code or ""})


# Documents the Bearer scheme in /docs (its "Authorize" button); the middleware does the checking.
_BEARER_DOC = HTTPBearer(auto_error=False, scheme_name="API key",
                         description="`Authorization: Bearer <key>` (DGATE_API_KEYS_FILE, DGATE_API_KEYS)")


async def caller(request: Request,
                 _doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER_DOC)]) -> ApiKey | None:
    """The verified key of the request; None when auth is off."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is None and request.app.state.dgate.keys.enabled:  # a route the middleware left open
        raise missing_key()
    return key


Caller = Annotated[ApiKey | None, Depends(caller)]


async def admin(key: Caller) -> ApiKey | None:
    """`dependencies=[Depends(admin)]`: a route for admin keys only (403 for a user key)."""
    if key is not None and key.role != "admin":
        raise not_admin()
    return key


def owner_of(key: ApiKey | None) -> str | None:
    """Who owns the jobs `key` creates and may see; None (auth off) sees every job."""
    return None if key is None else key.id


async def _owner(key: Caller) -> str | None:
    return owner_of(key)


Owner = Annotated[str | None, Depends(_owner)]
