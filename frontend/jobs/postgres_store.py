"""The job store in PostgreSQL: what several frontend replicas share.

A claim is one statement, `UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED)`: the row lock
makes a job one replica's, and SKIP LOCKED lets the other replicas take the next queued job at once
instead of queueing behind that lock. Every other change is a single UPDATE/DELETE whose WHERE
re-checks status and owner after any lock wait (READ COMMITTED re-evaluates it on the newest row), so
a worker that lost its job cannot overwrite it. Leases use the frontend's clock, not the server's,
the same as the SQLite store (one `clock` for tests; NTP-synchronised replicas in production).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection, errors, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dgate.frontend.jobs.store import (
    ADDED_COLUMNS,
    COLUMNS,
    DEFAULT_TABLE,
    STATUSES,
    ListOrder,
    VideoJob,
    check_list_args,
    check_progress,
    check_table_name,
    dump_json,
    interrupted_error,
    job_from_row,
    job_to_row,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    seconds TEXT NOT NULL,
    size TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress INTEGER NOT NULL CHECK (progress BETWEEN 0 AND 100),
    completed_at BIGINT,
    expires_at BIGINT,
    error TEXT,
    remixed_from_video_id TEXT,
    assets TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    worker_id TEXT,
    lease_expires_at DOUBLE PRECISION,
    owner TEXT
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {t} (status, seq)"
_OWNER_INDEX = "CREATE INDEX IF NOT EXISTS {index} ON {t} (owner, seq)"
_RELEASE = "worker_id = NULL, lease_expires_at = NULL"


S = TypeVar("S")


async def open_postgres_store(url: str, name: str, make: Callable[[AsyncConnectionPool], S],
                              create_schema: Callable[[S, AsyncConnection[Any]], Awaitable[None]], *,
                              min_size: int, max_size: int, timeout_s: float) -> S:
    """A store (the jobs, the quotas, the LoRA state) over a new pool of autocommit connections: the pool
    opens waiting for a first connection, so a wrong URL fails at startup, not at the first request; then
    the store's schema is created under an advisory lock, since replicas starting together would race on
    CREATE TABLE IF NOT EXISTS (a unique violation in pg_type). The pool is closed again if that fails."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, timeout=timeout_s, open=False,
        kwargs={"autocommit": True}, check=AsyncConnectionPool.check_connection, name=f"dgate-{name}",
    )
    await pool.open(wait=True, timeout=timeout_s)
    store = make(pool)
    try:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dgate-schema-{name}",))
            await create_schema(store, conn)
    except BaseException:
        await pool.close()
        raise
    return store


class PostgresJobStore:
    """`JobStore` over a PostgreSQL table; build it with `await PostgresJobStore.open(url)`."""

    def __init__(self, pool: AsyncConnectionPool, *, clock: Callable[[], float] = time.time,
                 table: str = DEFAULT_TABLE) -> None:
        """Takes an opened pool whose connections are in autocommit mode (what `open` makes)."""
        self._pool = pool
        self._clock = clock
        self._table = check_table_name(table)
        self._t = sql.Identifier(self._table)

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], float] = time.time, table: str = DEFAULT_TABLE,
                   min_size: int = 1, max_size: int = 8, timeout_s: float = 30.0) -> PostgresJobStore:
        check_table_name(table)
        return await open_postgres_store(url, table, lambda pool: cls(pool, clock=clock, table=table),
                                         cls._create_schema, min_size=min_size, max_size=max_size,
                                         timeout_s=timeout_s)

    async def _create_schema(self, conn: AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL(_SCHEMA).format(t=self._t))
        # A table of an older frontend gains the new columns; looked up first, as ALTER TABLE would lock
        # the table against the other replicas' queries even with nothing to add.
        present = {row["column_name"] for row in await self._rows(conn, sql.SQL(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s").format(), (self._table,))}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                await conn.execute(self._q(f"ALTER TABLE {{t}} ADD COLUMN {{column}} {kind}",
                                           column=sql.Identifier(column)))
        await conn.execute(sql.SQL(_INDEX).format(index=sql.Identifier(f"{self._table}_status_seq"), t=self._t))
        await conn.execute(sql.SQL(_OWNER_INDEX).format(index=sql.Identifier(f"{self._table}_owner_seq"),
                                                        t=self._t))

    # -- plumbing ------------------------------------------------------------------------------

    def _q(self, text: str, **parts: sql.Composable) -> sql.Composed:
        return sql.SQL(text).format(t=self._t, **parts)

    @staticmethod
    async def _rows(conn: AsyncConnection[Any], query: sql.Composed, params: tuple[Any, ...] | dict[str, Any] = (),
                    ) -> list[dict[str, Any]]:
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, params)
            return await cursor.fetchall() if cursor.description else []

    async def _query(self, query: sql.Composed, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            return await self._rows(conn, query, params)

    async def _count(self, query: sql.Composed, params: tuple[Any, ...]) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return cursor.rowcount

    async def _update_owned(self, job_id: str, worker_id: str | None, assignments: str, params: tuple[Any, ...],
                            statuses: tuple[str, ...] = ("in_progress",)) -> bool:
        """UPDATE one job only while it is in `statuses` (and this worker's, unless worker_id is None)."""
        owner = "" if worker_id is None else " AND worker_id = %s"
        query = self._q(f"UPDATE {{t}} SET {assignments} WHERE id = %s AND status = ANY(%s){owner}")
        owner_params = () if worker_id is None else (worker_id,)
        return await self._count(query, (*params, job_id, list(statuses), *owner_params)) == 1

    # -- JobStore --------------------------------------------------------------------------------

    async def create(self, job: VideoJob) -> None:
        query = self._q("INSERT INTO {t} ({columns}) VALUES ({values})",
                        columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
                        values=sql.SQL(", ").join(map(sql.Placeholder, COLUMNS)))
        try:
            await self._query(query, job_to_row(job))
        except errors.UniqueViolation as error:
            raise ValueError(f"video job {job.id} exists already") from error

    async def get(self, job_id: str) -> VideoJob | None:
        rows = await self._query(self._q("SELECT * FROM {t} WHERE id = %s"), (job_id,))
        return job_from_row(rows[0]) if rows else None

    async def count_queued(self) -> int:
        rows = await self._query(self._q("SELECT COUNT(*) AS queued FROM {t} WHERE status = 'queued'"))
        return int(rows[0]["queued"])

    async def count_by_status(self) -> dict[str, int]:
        rows = await self._query(self._q("SELECT status, COUNT(*) AS n FROM {t} GROUP BY status"))
        return dict.fromkeys(STATUSES, 0) | {row["status"]: int(row["n"]) for row in rows}

    async def list(self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc",
                   owner: str | None = None) -> tuple[list[VideoJob], bool]:
        check_list_args(limit, order)
        direction, compare = ("ASC", ">") if order == "asc" else ("DESC", "<")
        mine, owned = ("owner = %s", (owner,)) if owner is not None else ("TRUE", ())
        async with self._pool.connection() as conn:
            where: sql.Composable = sql.SQL(f"WHERE {mine}")
            params: tuple[Any, ...] = owned
            if after is not None:
                found = await self._rows(conn, self._q(f"SELECT seq FROM {{t}} WHERE id = %s AND {mine}"),
                                         (after, *owned))
                if not found:
                    raise ValueError(f"unknown video id {after!r} in `after`")
                where, params = sql.SQL(f"WHERE {mine} AND seq {compare} %s"), (*owned, found[0]["seq"])
            rows = await self._rows(
                conn, self._q(f"SELECT * FROM {{t}} {{where}} ORDER BY seq {direction} LIMIT %s", where=where),
                (*params, limit + 1),
            )
        return [job_from_row(row) for row in rows[:limit]], len(rows) > limit

    async def claim(self, worker_id: str, lease_s: float) -> VideoJob | None:
        rows = await self._query(
            self._q("UPDATE {t} SET status = 'in_progress', attempts = attempts + 1, worker_id = %s, "
                    "lease_expires_at = %s WHERE seq = (SELECT seq FROM {t} WHERE status = 'queued' "
                    "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *"),
            (worker_id, self._clock() + lease_s),
        )
        return job_from_row(rows[0]) if rows else None

    async def progress(self, job_id: str, worker_id: str, progress: int, lease_s: float) -> bool:
        check_progress(progress)
        return await self._update_owned(job_id, worker_id, "progress = %s, lease_expires_at = %s",
                                        (progress, self._clock() + lease_s))

    async def complete(self, job_id: str, worker_id: str, assets: dict[str, str], expires_at: int) -> bool:
        return await self._update_owned(
            job_id, worker_id,
            f"status = 'completed', progress = 100, completed_at = %s, expires_at = %s, assets = %s, {_RELEASE}",
            (int(self._clock()), expires_at, dump_json(assets)),
        )

    async def release(self, job_id: str, worker_id: str) -> bool:
        return await self._update_owned(
            job_id, worker_id, f"status = 'queued', progress = 0, attempts = GREATEST(attempts - 1, 0), {_RELEASE}", ())

    async def fail(self, job_id: str, worker_id: str | None, code: str, message: str, *,
                   expires_at: int | None = None) -> bool:
        return await self._update_owned(
            job_id, worker_id, f"status = 'failed', completed_at = %s, expires_at = %s, error = %s, {_RELEASE}",
            (int(self._clock()), expires_at, dump_json({"code": code, "message": message})),
            ("in_progress",) if worker_id is not None else ("queued", "in_progress"),
        )

    async def delete(self, job_id: str) -> VideoJob | None:
        rows = await self._query(self._q("DELETE FROM {t} WHERE id = %s RETURNING *"), (job_id,))
        return job_from_row(rows[0]) if rows else None

    async def recover(self, *, max_attempts: int, failed_expires_at: int | None = None) -> tuple[int, int]:
        now = self._clock()
        stale = "status = 'in_progress' AND lease_expires_at <= %s"
        async with self._pool.connection() as conn, conn.transaction():
            failed = await conn.execute(
                self._q(f"UPDATE {{t}} SET status = 'failed', completed_at = %s, expires_at = %s, error = %s, "
                        f"{_RELEASE} WHERE {stale} AND attempts >= %s"),
                (int(now), failed_expires_at, dump_json(interrupted_error()), now, max_attempts),
            )
            requeued = await conn.execute(
                self._q(f"UPDATE {{t}} SET status = 'queued', progress = 0, {_RELEASE} WHERE {stale}"), (now,),
            )
            return requeued.rowcount, failed.rowcount

    async def expired(self, now: int) -> builtins.list[VideoJob]:  # `list` is a method here
        rows = await self._query(
            self._q("SELECT * FROM {t} WHERE status IN ('completed', 'failed') AND expires_at <= %s ORDER BY seq"),
            (now,),
        )
        return [job_from_row(row) for row in rows]

    async def close(self) -> None:
        await self._pool.close()
