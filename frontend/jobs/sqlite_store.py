"""The job store in one SQLite file: one frontend process, or several on one machine sharing the file.

WAL lets pollers read while a worker writes; every write is a `BEGIN IMMEDIATE` transaction, which
takes the file's write lock up front, so two processes can never both see a job as queued and
claim it (a deferred transaction would find out only at its first write, and could not wait for
the lock then). `busy_timeout` makes a writer wait for the lock instead of failing. The calls run
in a thread (`asyncio.to_thread`) on one connection behind a lock: SQLite calls block, and one
connection per store is all a file-locked database can use for writes anyway.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    seconds TEXT NOT NULL,
    size TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress INTEGER NOT NULL CHECK (progress BETWEEN 0 AND 100),
    completed_at INTEGER,
    expires_at INTEGER,
    error TEXT,
    remixed_from_video_id TEXT,
    assets TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    worker_id TEXT,
    lease_expires_at REAL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS {t}_status_seq ON {t} (status, seq);
"""
_OWNER_INDEX = "CREATE INDEX IF NOT EXISTS {t}_owner_seq ON {t} (owner, seq)"


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes SQLite's write lock at once (BEGIN IMMEDIATE), so two writers
    never both read then fail to upgrade; rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class SQLiteJobStore:
    """`JobStore` over a SQLite file (see the module docstring for the locking)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 busy_timeout_s: float = 30.0, table: str = DEFAULT_TABLE) -> None:
        """Blocking (opens the file and creates the schema): from async code use `open_job_store`."""
        self._clock = clock
        self._t = check_table_name(table)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own.
        self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = _dict_row
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL under WAL: a power cut may lose the last commits but never corrupts the file.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._write() as conn:
            for statement in _SCHEMA.format(t=self._t).split(";"):
                if statement.strip():
                    conn.execute(statement)
            # A database of an older frontend: its table gains the new columns (in this one transaction).
            present = {row["name"] for row in conn.execute(f"PRAGMA table_info({self._t})").fetchall()}
            for column, kind in ADDED_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE {self._t} ADD COLUMN {column} {kind}")
            conn.execute(_OWNER_INDEX.format(t=self._t))

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._conn)

    def _now(self) -> float:
        return self._clock()

    def _fetch(self, job_id: str) -> VideoJob | None:
        row = self._conn.execute(f"SELECT * FROM {self._t} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    # -- JobStore --------------------------------------------------------------------------------

    async def create(self, job: VideoJob) -> None:
        row = job_to_row(job)
        statement = (f"INSERT INTO {self._t} ({', '.join(COLUMNS)}) "
                     f"VALUES ({', '.join(':' + name for name in COLUMNS)})")

        def insert() -> None:
            try:
                with self._write() as conn:
                    conn.execute(statement, row)
            except sqlite3.IntegrityError as error:
                if self._fetch(job.id) is not None:
                    raise ValueError(f"video job {job.id} exists already") from error
                raise

        await self._run(insert)

    async def get(self, job_id: str) -> VideoJob | None:
        return await self._run(self._fetch, job_id)

    async def count_queued(self) -> int:
        def count() -> int:
            row = self._conn.execute(f"SELECT COUNT(*) AS queued FROM {self._t} WHERE status = 'queued'").fetchone()
            return int(row["queued"])

        return await self._run(count)

    async def count_by_status(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            rows = self._conn.execute(f"SELECT status, COUNT(*) AS n FROM {self._t} GROUP BY status").fetchall()
            return dict.fromkeys(STATUSES, 0) | {row["status"]: int(row["n"]) for row in rows}

        return await self._run(count)

    async def list(self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc",
                   owner: str | None = None) -> tuple[list[VideoJob], bool]:
        check_list_args(limit, order)
        direction, compare = ("ASC", ">") if order == "asc" else ("DESC", "<")
        mine, owned = ("owner = ?", (owner,)) if owner is not None else ("1 = 1", ())

        def page() -> tuple[list[VideoJob], bool]:
            # One read transaction: the cursor's position and the page come from the same snapshot.
            self._conn.execute("BEGIN")
            params: tuple[Any, ...]
            try:
                where, params = f"WHERE {mine}", owned
                if after is not None:
                    cursor = self._conn.execute(f"SELECT seq FROM {self._t} WHERE id = ? AND {mine}",
                                                (after, *owned)).fetchone()
                    if cursor is None:
                        raise ValueError(f"unknown video id {after!r} in `after`")
                    where, params = f"WHERE {mine} AND seq {compare} ?", (*owned, cursor["seq"])
                rows = self._conn.execute(
                    f"SELECT * FROM {self._t} {where} ORDER BY seq {direction} LIMIT ?", (*params, limit + 1),
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
            return [job_from_row(row) for row in rows[:limit]], len(rows) > limit

        return await self._run(page)

    async def claim(self, worker_id: str, lease_s: float) -> VideoJob | None:
        def claim() -> VideoJob | None:
            with self._write() as conn:
                row = conn.execute(
                    f"SELECT seq FROM {self._t} WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    return None
                conn.execute(
                    f"UPDATE {self._t} SET status = 'in_progress', attempts = attempts + 1, worker_id = ?, "
                    "lease_expires_at = ? WHERE seq = ?",
                    (worker_id, self._now() + lease_s, row["seq"]),
                )
                claimed = conn.execute(f"SELECT * FROM {self._t} WHERE seq = ?", (row["seq"],)).fetchone()
            return job_from_row(claimed)

        return await self._run(claim)

    def _update_owned(self, job_id: str, worker_id: str | None, assignments: str, params: tuple[Any, ...],
                      statuses: tuple[str, ...] = ("in_progress",)) -> bool:
        """UPDATE one job only while it is in `statuses` (and this worker's, unless worker_id is None)."""
        owner = "" if worker_id is None else " AND worker_id = ?"
        placeholders = ", ".join("?" for _ in statuses)
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE {self._t} SET {assignments} WHERE id = ? AND status IN ({placeholders}){owner}",
                (*params, job_id, *statuses, *(() if worker_id is None else (worker_id,))),
            )
            return cursor.rowcount == 1

    async def progress(self, job_id: str, worker_id: str, progress: int, lease_s: float) -> bool:
        check_progress(progress)
        return await self._run(self._update_owned, job_id, worker_id, "progress = ?, lease_expires_at = ?",
                               (progress, self._now() + lease_s))

    async def complete(self, job_id: str, worker_id: str, assets: dict[str, str], expires_at: int) -> bool:
        return await self._run(
            self._update_owned, job_id, worker_id,
            "status = 'completed', progress = 100, completed_at = ?, expires_at = ?, assets = ?, "
            "worker_id = NULL, lease_expires_at = NULL",
            (int(self._now()), expires_at, dump_json(assets)),
        )

    async def release(self, job_id: str, worker_id: str) -> bool:
        return await self._run(self._update_owned, job_id, worker_id,
                               "status = 'queued', progress = 0, attempts = MAX(attempts - 1, 0), "
                               "worker_id = NULL, lease_expires_at = NULL", ())

    async def fail(self, job_id: str, worker_id: str | None, code: str, message: str, *,
                   expires_at: int | None = None) -> bool:
        statuses = ("in_progress",) if worker_id is not None else ("queued", "in_progress")
        return await self._run(
            self._update_owned, job_id, worker_id,
            "status = 'failed', completed_at = ?, expires_at = ?, error = ?, worker_id = NULL, lease_expires_at = NULL",
            (int(self._now()), expires_at, dump_json({"code": code, "message": message})), statuses,
        )

    async def delete(self, job_id: str) -> VideoJob | None:
        def delete() -> VideoJob | None:
            with self._write() as conn:
                job = self._fetch(job_id)
                if job is not None:
                    conn.execute(f"DELETE FROM {self._t} WHERE id = ?", (job_id,))
            return job

        return await self._run(delete)

    async def recover(self, *, max_attempts: int, failed_expires_at: int | None = None) -> tuple[int, int]:
        def recover() -> tuple[int, int]:
            now = self._now()
            error = dump_json(interrupted_error())
            stale = "status = 'in_progress' AND lease_expires_at <= ?"
            with self._write() as conn:
                failed = conn.execute(
                    f"UPDATE {self._t} SET status = 'failed', completed_at = ?, expires_at = ?, error = ?, "
                    f"worker_id = NULL, lease_expires_at = NULL WHERE {stale} AND attempts >= ?",
                    (int(now), failed_expires_at, error, now, max_attempts),
                ).rowcount
                requeued = conn.execute(
                    f"UPDATE {self._t} SET status = 'queued', progress = 0, worker_id = NULL, "
                    f"lease_expires_at = NULL WHERE {stale}",
                    (now,),
                ).rowcount
            return requeued, failed

        return await self._run(recover)

    async def expired(self, now: int) -> builtins.list[VideoJob]:  # `list` is a method here
        def expired() -> builtins.list[VideoJob]:
            rows = self._conn.execute(
                f"SELECT * FROM {self._t} WHERE status IN ('completed', 'failed') AND expires_at <= ? ORDER BY seq",
                (now,),
            ).fetchall()
            return [job_from_row(row) for row in rows]

        return await self._run(expired)

    async def close(self) -> None:
        await self._run(self._conn.close)

