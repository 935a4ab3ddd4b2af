"""The LoRA registry's state (adapters by nickname, each pipeline's active set) in the job database, so
replicas sharing it agree and a restarted frontend keeps it.

The state is one small JSON document in one row (`<prefix>_state`, id 1) with a version that every
change bumps: a reader gets a consistent snapshot from one statement, and a replica can tell whether
its cached copy is current from the version alone (`LoraRegistry` does that per request).

A change (`update`) reads the state, runs the caller's `change` (which may await: the routes check the
adapters in Triton there) and writes the result, all under one database lock, so concurrent changes
from any replica run one after another in the order they took the lock: SQLite's `BEGIN IMMEDIATE`
(the file's write lock; other writers of the file wait meanwhile), PostgreSQL's `SELECT ... FOR UPDATE`
of the state row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dgate.core.lora.request import ALL_COMPONENTS, AdapterRef
from dgate.frontend.jobs.store import check_table_name

T = TypeVar("T")
DEFAULT_PREFIX = "lora"

_SCHEMA = """CREATE TABLE IF NOT EXISTS {t} (
    id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, state TEXT NOT NULL)"""
_SEED = "INSERT INTO {t} (id, version, state) VALUES (1, 0, {p}) ON CONFLICT (id) DO NOTHING"
_VERSION = "SELECT version FROM {t} WHERE id = 1"
_READ = "SELECT version, state FROM {t} WHERE id = 1"
_WRITE = "UPDATE {t} SET version = {p}, state = {p} WHERE id = 1"


@dataclass(frozen=True)
class ActiveAdapter:
    nickname: str
    path: str
    strength: float
    target: str = ALL_COMPONENTS
    merged: bool = False

    def ref(self, scale: float | None = None) -> AdapterRef:
        return AdapterRef(self.path, self.strength if scale is None else scale, self.target)

    def describe(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LoraState:
    """nickname -> adapter path; pipeline -> its active adapters; the version it was read at."""

    loaded: Mapping[str, str] = field(default_factory=dict)
    active: Mapping[str, tuple[ActiveAdapter, ...]] = field(default_factory=dict)
    version: int = 0

    def to_json(self) -> str:
        return json.dumps({"loaded": dict(self.loaded),
                           "active": {m: [a.describe() for a in adapters] for m, adapters in self.active.items()}},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str, version: int) -> LoraState:
        data = json.loads(text)
        return cls(dict(data.get("loaded", {})),
                   {m: tuple(ActiveAdapter(**a) for a in adapters) for m, adapters in data.get("active", {}).items()},
                   version)

    def with_active(self, model: str, adapters: tuple[ActiveAdapter, ...]) -> LoraState:
        return replace(self, active={**self.active, model: adapters})


EMPTY = LoraState().to_json()
Change = Callable[[LoraState], Awaitable[LoraState | None]]


class LoraStore(Protocol):
    async def version(self) -> int:
        """The state's version (what a cached copy is compared with)."""

    async def read(self) -> LoraState: ...

    async def update(self, change: Change) -> LoraState:
        """Run `change(current)` under the database lock and store what it returns (version + 1); None
        stores nothing. An exception leaves the state as it was. Returns the state now stored."""

    async def close(self) -> None: ...


class SQLiteLoraStore:
    """`LoraStore` in the job store's SQLite file: a write connection held for a whole change, a read
    connection beside it (WAL: reads are not blocked by a change in progress)."""

    def __init__(self, path: str | Path, *, prefix: str = DEFAULT_PREFIX, busy_timeout_s: float = 30.0) -> None:
        self._t = check_table_name(f"{prefix}_state")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect(path, busy_timeout_s)
        self._reader = self._connect(path, busy_timeout_s)
        self._read_lock = threading.Lock()
        self._write_lock = asyncio.Lock()  # this process's changes queue here, then on the file's lock
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            self._writer.execute(self._sql(_SCHEMA))
            self._writer.execute(self._sql(_SEED), (EMPTY,))
            self._writer.execute("COMMIT")
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise

    @staticmethod
    def _connect(path: str | Path, busy_timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _sql(self, text: str) -> str:
        return text.format(t=self._t, p="?")

    async def _read_call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._read_lock:
                return fn(self._reader)

        return await asyncio.to_thread(locked)

    async def version(self) -> int:
        return await self._read_call(lambda conn: int(conn.execute(self._sql(_VERSION)).fetchone()[0]))

    async def read(self) -> LoraState:
        def read(conn: sqlite3.Connection) -> LoraState:
            version, text = conn.execute(self._sql(_READ)).fetchone()
            return LoraState.from_json(text, int(version))

        return await self._read_call(read)

    async def update(self, change: Change) -> LoraState:
        async with self._write_lock:
            def begin() -> LoraState:
                self._writer.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) for other processes' changes
                version, text = self._writer.execute(self._sql(_READ)).fetchone()
                return LoraState.from_json(text, int(version))

            try:
                current = await _finish_in_thread(begin)
                changed = await change(current)
                if changed is None:
                    await _finish_in_thread(lambda: self._writer.execute("COMMIT"))
                    return current
                stored = replace(changed, version=current.version + 1)

                def write() -> None:
                    self._writer.execute(self._sql(_WRITE), (stored.version, stored.to_json()))
                    self._writer.execute("COMMIT")

                await _finish_in_thread(write)
                return stored
            except BaseException:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")  # never waits for a lock: done here, even when cancelled
                raise

    async def close(self) -> None:
        def close() -> None:
            with self._read_lock:
                self._reader.close()
            self._writer.close()

        async with self._write_lock:
            await asyncio.to_thread(close)


async def _finish_in_thread(fn: Callable[[], T]) -> T:
    """`fn` in a thread; a cancelled caller still waits for it to end, so that a transaction it began
    (BEGIN IMMEDIATE may be waiting for the lock) is seen, and rolled back, before the cancellation goes on."""
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


class PostgresLoraStore:
    """`LoraStore` in PostgreSQL (what replicas share); build it with `await PostgresLoraStore.open(url)`."""

    def __init__(self, pool: Any, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._pool = pool
        self._t = check_table_name(f"{prefix}_state")

    @classmethod
    async def open(cls, url: str, *, prefix: str = DEFAULT_PREFIX, min_size: int = 1, max_size: int = 4,
                   timeout_s: float = 30.0) -> PostgresLoraStore:
        from dgate.frontend.jobs.postgres_store import open_postgres_store  # psycopg only when used

        return await open_postgres_store(url, prefix, lambda pool: cls(pool, prefix=prefix), cls._create_schema,
                                         min_size=min_size, max_size=max_size, timeout_s=timeout_s)

    async def _create_schema(self, conn: Any) -> None:
        await conn.execute(self._sql(_SCHEMA))
        await conn.execute(self._sql(_SEED), (EMPTY,))

    def _sql(self, text: str) -> Any:
        from psycopg import sql

        # The table name is a checked plain name (check_table_name), so it can be spliced as text.
        return sql.SQL(text.format(t=self._t, p="%s"))

    async def version(self) -> int:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(self._sql(_VERSION))).fetchone()
            return int(row[0])

    async def read(self) -> LoraState:
        async with self._pool.connection() as conn:
            version, text = await (await conn.execute(self._sql(_READ))).fetchone()
            return LoraState.from_json(text, int(version))

    async def update(self, change: Change) -> LoraState:
        async with self._pool.connection() as conn, conn.transaction():
            # The row lock is the changes' queue across replicas; it holds until the transaction ends.
            version, text = await (await conn.execute(self._sql(_READ + " FOR UPDATE"))).fetchone()
            current = LoraState.from_json(text, int(version))
            changed = await change(current)
            if changed is None:
                return current
            stored = replace(changed, version=current.version + 1)
            await conn.execute(self._sql(_WRITE), (stored.version, stored.to_json()))
            return stored

    async def close(self) -> None:
        await self._pool.close()


async def open_lora_store(url: str, *, prefix: str = DEFAULT_PREFIX) -> LoraStore:
    """The LoRA state in the job store's database (`jobs_db`'s URL forms, see `open_job_store`)."""
    from dgate.frontend.jobs import open_beside_jobs  # the same URL rules as the job store

    return await open_beside_jobs(url, lambda u: PostgresLoraStore.open(u, prefix=prefix),
                                  lambda path: SQLiteLoraStore(path, prefix=prefix))
