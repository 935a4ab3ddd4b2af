"""Per-key quotas: requests per minute, requests in flight and megapixels per day (frontend/auth.py's
`Quota`, or the `DGATE_QUOTA_*` defaults for a key without its own). With auth off there are none.

The counts live in the job store's database (frontend/jobs/quota_store.py), so replicas sharing it share
every quota. Requests per minute and megapixels per day are fixed windows (the UTC minute, the UTC day);
in-flight requests are leases renewed while the request runs, so a crashed replica's expire.

`QuotaMiddleware` (plain ASGI, inside the auth middleware) counts every keyed HTTP request and holds its
in-flight slot until the response has ended (a stream included); the image and video routes charge
megapixels once the request's cost is known (`charge_megapixels`: n x width x height for images, frames x
width x height for videos), before any generation. Over a limit: 429 in OpenAI's shape, code
`rate_limit_exceeded`, with `Retry-After`. Every keyed response of a key limited per minute carries
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` as OpenAI
sends them (the reset as a duration: `1s`, `6m0s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dgate.frontend.auth import ApiKey, Quota
from dgate.frontend.engine import ServiceUnavailable
from dgate.frontend.errors import OpenAIError
from dgate.frontend.jobs.quota_store import DEFAULT_PREFIX, QuotaStore, open_quota_store

MINUTE, DAY = 60, 86400
REQUESTS, MEGAPIXELS = "requests", "megapixels"


def reset_duration(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` form: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_limited(message: str, kind: str, retry_after_s: float, headers: dict[str, str] | None = None) -> OpenAIError:
    """OpenAI's 429: `type` names what ran out (OpenAI's `requests` or `tokens`; here `megapixels`)."""
    headers = {**(headers or {}), "Retry-After": str(max(1, math.ceil(retry_after_s)))}
    if kind == MEGAPIXELS:  # literal calls: the README's error table is read from them (dgate.docs)
        return OpenAIError(429, message, type="megapixels", code="rate_limit_exceeded", headers=headers)
    return OpenAIError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


@dataclass(frozen=True)
class RequestWindow:
    """The key's requests-per-minute window after counting this request: OpenAI's three headers."""

    limit: int
    remaining: int
    reset_s: float

    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit-requests": str(self.limit),
                "x-ratelimit-remaining-requests": str(self.remaining),
                "x-ratelimit-reset-requests": reset_duration(self.reset_s)}


class Quotas:
    """The quota policy over a `QuotaStore`; `clock` is wall-clock seconds (replaced by tests)."""

    def __init__(self, defaults: Quota, *, enabled: bool, db_url: str, lease_s: float = 60.0,
                 clock: Callable[[], float] = time.time, prefix: str = DEFAULT_PREFIX) -> None:
        self.defaults, self.enabled, self.db_url, self.lease_s = defaults, enabled, db_url, lease_s
        self.clock, self.prefix = clock, prefix
        self._store: QuotaStore | None = None

    async def open(self) -> None:
        if self.enabled:
            self._store = await open_quota_store(self.db_url, prefix=self.prefix)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    @property
    def store(self) -> QuotaStore:
        if self._store is None:
            raise ServiceUnavailable("the quota store is not open (the app is starting or stopping)")
        return self._store

    def limits(self, key: ApiKey) -> Quota:
        """The key's own limits, each unset one taken from the defaults."""
        own, base = key.quota, self.defaults
        return Quota(
            requests_per_minute=own.requests_per_minute if own.requests_per_minute is not None
            else base.requests_per_minute,
            in_flight=own.in_flight if own.in_flight is not None else base.in_flight,
            megapixels_per_day=own.megapixels_per_day if own.megapixels_per_day is not None
            else base.megapixels_per_day,
        )

    async def count_request(self, key: ApiKey) -> RequestWindow | None:
        """Count one request against the key's per-minute limit; None when it has none. 429 over it."""
        limit = self.limits(key).requests_per_minute
        if limit is None:
            return None
        now = self.clock()
        window = int(now // MINUTE)
        reset_s = (window + 1) * MINUTE - now
        used = await self.store.add(key.id, REQUESTS, window, 1, limit)
        if used is None:
            headers = RequestWindow(limit, 0, reset_s).headers()
            raise rate_limited(f"Rate limit reached for requests per minute (RPM) of key {key.label}: limit "
                               f"{limit}. Please try again in {reset_duration(reset_s)}.", REQUESTS, reset_s, headers)
        return RequestWindow(limit, max(0, limit - int(used)), reset_s)

    @contextlib.asynccontextmanager
    async def in_flight(self, key: ApiKey, headers: dict[str, str]) -> AsyncIterator[None]:
        """Hold one of the key's in-flight slots (renewed while held); 429 when all are taken."""
        limit = self.limits(key).in_flight
        if limit is None:
            yield
            return
        lease = uuid.uuid4().hex
        now = self.clock()
        if await self.store.acquire(key.id, lease, limit, now, now + self.lease_s) is None:
            raise rate_limited(f"Too many requests in flight for key {key.label}: limit {limit}. Retry when one "
                               "of them has finished.", REQUESTS, 1, headers)
        renewal = asyncio.ensure_future(self._renew(lease))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await asyncio.shield(self.store.release(lease))

    async def _renew(self, lease: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.store.renew(lease, self.clock() + self.lease_s)

    async def charge(self, key: ApiKey, megapixels: float) -> None:
        """Add a request's megapixels to the key's day; 429 (nothing added) when that passes its limit."""
        limit = self.limits(key).megapixels_per_day
        if limit is None:
            return
        now = self.clock()
        window = int(now // DAY)
        added = await self.store.add(key.id, MEGAPIXELS, window, megapixels, limit) if megapixels <= limit else None
        if added is None:
            used = await self.store.used(key.id, MEGAPIXELS, window)
            reset_s = (window + 1) * DAY - now
            raise rate_limited(f"Quota reached for megapixels per day of key {key.label}: limit {limit:g}, used "
                               f"{used:g}, requested {megapixels:g}. Please try again in {reset_duration(reset_s)}.",
                               MEGAPIXELS, reset_s)


def megapixels(count: int, width: int, height: int) -> float:
    """What a request costs: `count` images (or frames) of width x height."""
    return count * width * height / 1e6


# The keyed request being served (set by the middleware, for HTTP and WebSocket): whom to charge.
CALLER: ContextVar[tuple[Quotas, ApiKey] | None] = ContextVar("dgate_quota_caller", default=None)


async def charge_megapixels(cost: float) -> None:
    """Charge the calling key `cost` megapixels; nothing with auth off or outside a keyed request."""
    if (caller := CALLER.get()) is not None:
        quotas, key = caller
        await quotas.charge(key, cost)


class QuotaMiddleware:
    """Counts every keyed request (the auth middleware put its `ApiKey` in the scope) and holds its in-flight
    slot until the response has ended; adds the x-ratelimit-* headers. Sets `CALLER` for `charge_megapixels`
    (WebSockets too, which are charged megapixels only)."""

    def __init__(self, app: ASGIApp, quotas: Quotas) -> None:
        self.app, self.quotas = app, quotas

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = (scope.get("state") or {}).get("api_key") if scope["type"] in ("http", "websocket") else None
        if not self.quotas.enabled or not isinstance(key, ApiKey):
            await self.app(scope, receive, send)
            return
        CALLER.set((self.quotas, key))  # the route's task runs in this context
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        try:
            window = await self.quotas.count_request(key)
            headers = window.headers() if window is not None else {}
            slot = self.quotas.in_flight(key, headers)
            await slot.__aenter__()
        except OpenAIError as error:
            await error.response()(scope, receive, send)
            return
        raw = [(name.encode(), value.encode()) for name, value in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and raw:
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            await slot.__aexit__(None, None, None)
