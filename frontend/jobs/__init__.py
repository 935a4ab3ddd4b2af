"""Durable Videos API jobs: one `JobStore` interface, a SQLite file or a shared PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dgate.frontend.jobs.store import JobStatus, JobStore, VideoJob, new_job_id

__all__ = ["JobStatus", "JobStore", "VideoJob", "new_job_id", "open_beside_jobs", "open_job_store", "sqlite_path"]

T = TypeVar("T")

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


async def open_job_store(url: str, **kw: Any) -> JobStore:
    """`sqlite:///abs/path/jobs.db`, `sqlite://relative/jobs.db` or a bare path -> SQLiteJobStore;
    `postgresql://...` / `postgres://...` -> PostgresJobStore. `kw` goes to the store (`clock`,
    `table`, and the pool sizes for PostgreSQL). Async because opening does I/O: the PostgreSQL
    pool connects and both stores create their schema, so a bad URL fails at startup."""
    if url.startswith(_POSTGRES_SCHEMES):
        from dgate.frontend.jobs.postgres_store import PostgresJobStore  # psycopg only when used

        return await PostgresJobStore.open(url, **kw)
    path = sqlite_path(url)
    from dgate.frontend.jobs.sqlite_store import SQLiteJobStore

    return await asyncio.to_thread(lambda: SQLiteJobStore(path, **kw))


def sqlite_path(url: str) -> str:
    """The file of a `sqlite://` URL or a bare path; ValueError for anything else."""
    if url.startswith(_SQLITE_SCHEME):
        path = url[len(_SQLITE_SCHEME):]
    elif url and "://" not in url and not url.startswith(("sqlite:", "postgres:", "postgresql:")):
        path = url
    else:
        raise ValueError(f"job store URL {url!r}: expected sqlite:///path/to/jobs.db, a file path, "
                         "or postgresql://user@host:port/dbname")
    if not path:
        raise ValueError(f"job store URL {url!r} names no file")
    return path


async def open_beside_jobs(url: str, postgres: Callable[[str], Awaitable[T]], sqlite: Callable[[str], T]) -> T:
    """A store that keeps its tables in the job database (quotas, the LoRA state): `postgres(url)` for a
    PostgreSQL URL, else `sqlite(path)` (off the event loop) for the file of the job store's URL forms."""
    if url.startswith(_POSTGRES_SCHEMES):
        return await postgres(url)
    path = sqlite_path(url)
    return await asyncio.to_thread(sqlite, path)
