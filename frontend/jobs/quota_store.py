"""Quota usage in the database the job store uses, so that replicas sharing it share every key's quota.

Two tables (`<prefix>_usage`, `<prefix>_leases`):
- usage: one row per (key, kind) holding the current fixed window and what was used in it. `add` is one
  atomic UPSERT whose `WHERE` refuses the change when it would pass the limit (a new window restarts
  from zero in the same statement), so two replicas can never both take the last unit.
- leases: one row per request in flight, with an expiry that the holder renews; a crashed replica's rows
  simply expire. Counting and inserting happen in one transaction under a per-key lock (SQLite's
  `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so the count cannot be passed by a race.

Times are passed in by the caller (its clock), as the job stores' leases use the frontend's clock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dgate.frontend.jobs.sqlite_store import immediate_transaction
from dgate.frontend.jobs.store import check_table_name

T = TypeVar("T")
DEFAULT_PREFIX = "quota"

_USAGE = """CREATE TABLE IF NOT EXISTS {u} (
    key_id TEXT NOT NULL, kind TEXT NOT NULL, window_start BIGINT NOT NULL, used DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, kind))"""
_LEASES = """CREATE TABLE IF NOT EXISTS {l} (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"""
_LEASE_INDEX = "CREATE INDEX IF NOT EXISTS {l}_key ON {l} (key_id, expires_at)"
# The usage after adding: the old row's plus the amount in the same window, the amount alone in a new one.
_NEW_USED = "CASE WHEN {u}.window_start = excluded.window_start THEN {u}.used + excluded.used ELSE excluded.used END"
_ADD = ("INSERT INTO {u} (key_id, kind, window_start, used) VALUES ({p}, {p}, {p}, {p}) "
        "ON CONFLICT (key_id, kind) DO UPDATE SET used = " + _NEW_USED + ", window_start = excluded.window_start "
        "WHERE " + _NEW_USED + " <= {p} RETURNING used")
_USED = "SELECT used FROM {u} WHERE key_id = {p} AND kind = {p} AND window_start = {p}"


class QuotaStore(Protocol):
    async def add(self, key_id: str, kind: str, window: int, amount: float, limit: float) -> float | None:
        """Add `amount` to the key's usage of `kind` in `window` unless that passes `limit`: the usage
        after adding, or None (nothing added). The caller refuses an amount over the limit by itself."""

    async def used(self, key_id: str, kind: str, window: int) -> float:
        """The key's usage of `kind` in `window` (0 in a window not yet used)."""

    async def acquire(self, key_id: str, lease_id: str, limit: int, now: float, expires_at: float) -> int | None:
        """Take one of the key's `limit` in-flight slots until `expires_at` (leases expired at `now` are
        dropped first): the count held afterwards, or None when all are taken."""

    async def renew(self, lease_id: str, expires_at: float) -> None: ...

    async def release(self, lease_id: str) -> None: ...

    async def close(self) -> None: ...


def _names(prefix: str) -> tuple[str, str]:
    check_table_name(prefix)
    return check_table_name(f"{prefix}_usage"), check_table_name(f"{prefix}_leases")


class SQLiteQuotaStore:
    """`QuotaStore` in a SQLite file (the job store's): one connection behind a lock, calls in a thread."""

    def __init__(self, path: str | Path, *, prefix: str = DEFAULT_PREFIX, busy_timeout_s: float = 30.0) -> None:
        self._u, self._l = _names(prefix)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._write() as conn:
            for statement in (_USAGE, _LEASES, _LEASE_INDEX):
                conn.execute(statement.format(u=self._u, l=self._l))

    def _sql(self, text: str) -> str:
        return text.format(u=self._u, l=self._l, p="?")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._conn)

    async def add(self, key_id: str, kind: str, window: int, amount: float, limit: float) -> float | None:
        def add() -> float | None:
            with self._write() as conn:
                row = conn.execute(self._sql(_ADD), (key_id, kind, window, amount, limit)).fetchone()
            return None if row is None else float(row[0])

        return await self._run(add)

    async def used(self, key_id: str, kind: str, window: int) -> float:
        def used() -> float:
            row = self._conn.execute(self._sql(_USED), (key_id, kind, window)).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._run(used)

    async def acquire(self, key_id: str, lease_id: str, limit: int, now: float, expires_at: float) -> int | None:
        def acquire() -> int | None:
            with self._write() as conn:
                conn.execute(self._sql("DELETE FROM {l} WHERE key_id = {p} AND expires_at <= {p}"), (key_id, now))
                held = conn.execute(self._sql("SELECT count(*) FROM {l} WHERE key_id = {p}"), (key_id,)).fetchone()[0]
                if held >= limit:
                    return None
                conn.execute(self._sql("INSERT INTO {l} (id, key_id, expires_at) VALUES ({p}, {p}, {p})"),
                             (lease_id, key_id, expires_at))
                return int(held) + 1

        return await self._run(acquire)

    async def renew(self, lease_id: str, expires_at: float) -> None:
        def renew() -> None:
            with self._write() as conn:
                conn.execute(self._sql("UPDATE {l} SET expires_at = {p} WHERE id = {p}"), (expires_at, lease_id))

        await self._run(renew)

    async def release(self, lease_id: str) -> None:
        def release() -> None:
            with self._write() as conn:
                conn.execute(self._sql("DELETE FROM {l} WHERE id = {p}"), (lease_id,))

        await self._run(release)

    async def close(self) -> None:
        await self._run(self._conn.close)


class PostgresQuotaStore:
    """`QuotaStore` in PostgreSQL (what replicas share); build it with `await PostgresQuotaStore.open(url)`."""

    def __init__(self, pool: Any, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._pool = pool
        self._prefix = prefix
        self._u, self._l = _names(prefix)

    @classmethod
    async def open(cls, url: str, *, prefix: str = DEFAULT_PREFIX, min_size: int = 1, max_size: int = 4,
                   timeout_s: float = 30.0) -> PostgresQuotaStore:
        from dgate.frontend.jobs.postgres_store import open_postgres_store  # psycopg only when used

        _names(prefix)
        return await open_postgres_store(url, prefix, lambda pool: cls(pool, prefix=prefix), cls._create_schema,
                                         min_size=min_size, max_size=max_size, timeout_s=timeout_s)

    async def _create_schema(self, conn: Any) -> None:
        for statement in (_USAGE, _LEASES, _LEASE_INDEX):
            await conn.execute(self._sql(statement))

    def _sql(self, text: str) -> Any:
        from psycopg import sql

        # Identifiers are checked plain names (check_table_name), so they can be spliced as text.
        return sql.SQL(text.format(u=self._u, l=self._l, p="%s"))

    async def _one(self, text: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._sql(text), params)
            return await cursor.fetchone() if cursor.description else None

    async def add(self, key_id: str, kind: str, window: int, amount: float, limit: float) -> float | None:
        row = await self._one(_ADD, (key_id, kind, window, amount, limit))
        return None if row is None else float(row[0])

    async def used(self, key_id: str, kind: str, window: int) -> float:
        row = await self._one(_USED, (key_id, kind, window))
        return 0.0 if row is None else float(row[0])

    async def acquire(self, key_id: str, lease_id: str, limit: int, now: float, expires_at: float) -> int | None:
        async with self._pool.connection() as conn, conn.transaction():
            # One key's acquisitions take turns (across replicas): the count below cannot be raced past.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dgate-{self._prefix}-{key_id}",))
            await conn.execute(self._sql("DELETE FROM {l} WHERE key_id = {p} AND expires_at <= {p}"), (key_id, now))
            cursor = await conn.execute(self._sql("SELECT count(*) FROM {l} WHERE key_id = {p}"), (key_id,))
            row = await cursor.fetchone()
            held = int(row[0]) if row is not None else 0
            if held >= limit:
                return None
            await conn.execute(self._sql("INSERT INTO {l} (id, key_id, expires_at) VALUES ({p}, {p}, {p})"),
                               (lease_id, key_id, expires_at))
            return held + 1

    async def renew(self, lease_id: str, expires_at: float) -> None:
        await self._one("UPDATE {l} SET expires_at = {p} WHERE id = {p}", (expires_at, lease_id))

    async def release(self, lease_id: str) -> None:
        await self._one("DELETE FROM {l} WHERE id = {p}", (lease_id,))

    async def close(self) -> None:
        await self._pool.close()


async def open_quota_store(url: str, *, prefix: str = DEFAULT_PREFIX) -> QuotaStore:
    """The quota tables in the job store's database (`jobs_db`'s URL forms, see `open_job_store`)."""
    from dgate.frontend.jobs import open_beside_jobs  # the same URL rules as the job store

    return await open_beside_jobs(url, lambda u: PostgresQuotaStore.open(u, prefix=prefix),
                                  lambda path: SQLiteQuotaStore(path, prefix=prefix))
