"""The video job stores: the same behaviour from SQLite and from a real PostgreSQL server, plus the
asset directory. Time is a fake clock, so leases expire without sleeping."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dgate.frontend.assets import AssetStore
from dgate.frontend.jobs import JobStore, VideoJob, new_job_id, open_job_store
from dgate.frontend.jobs.store import INTERRUPTED

# `postgres_url`: the session's throw-away PostgreSQL server (tests/postgres_server.py, a conftest plugin).
T0 = 1_700_000_000.0
StoreFactory = Callable[..., Awaitable[JobStore]]


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[StoreFactory]:
    """Opens store objects on one fresh namespace (a new SQLite file; a new PostgreSQL table), so a
    test can open a second store on the same data, as another process or replica would."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    table = f"jobs_{uuid.uuid4().hex[:12]}"
    opened: list[JobStore] = []

    async def factory(**kw: Any) -> JobStore:
        store = await open_job_store(url, clock=clock, table=table, **kw)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: StoreFactory) -> JobStore:
    return await open_store()


def make_job(prompt: str = "a cat", **fields: Any) -> VideoJob:
    return VideoJob(id=new_job_id(), model="tiny-video", prompt=prompt, seconds="4", size="64x64",
                    created_at=int(T0), request={"steps": 2, "frames": 9, "guidance": 3.5}, **fields)


async def create_jobs(store: JobStore, count: int) -> list[VideoJob]:
    jobs = [make_job(f"prompt {i}") for i in range(count)]
    for job in jobs:
        await store.create(job)
    return jobs


async def test_create_get_round_trips_every_field(store: JobStore) -> None:
    job = VideoJob(
        id=new_job_id(), model="tiny-video", prompt="ünïcode 🎬 'quotes'", seconds="8", size="1280x720",
        created_at=1_700_000_123, request={"nested": {"list": [1, 2.5, None]}, "seed": 7},
        status="failed", progress=42, completed_at=1_700_000_200, expires_at=1_700_003_800,
        error={"code": "oops", "message": "went wrong"}, remixed_from_video_id=new_job_id(),
        assets={"video": "a.mp4", "thumbnail": "a.webp"}, attempts=3, worker_id="w-1", lease_expires_at=T0 + 0.25,
    )
    await store.create(job)
    assert await store.get(job.id) == job
    plain = make_job()
    await store.create(plain)
    assert await store.get(plain.id) == plain
    assert await store.get(new_job_id()) is None
    with pytest.raises(ValueError, match="exists"):
        await store.create(replace(job, prompt="again"))


async def test_list_pages_with_cursor(store: JobStore) -> None:
    assert await store.list() == ([], False)
    ids = [job.id for job in await create_jobs(store, 5)]

    async def page(**kw: Any) -> tuple[list[str], bool]:
        jobs, has_more = await store.list(**kw)
        return [job.id for job in jobs], has_more

    # Newest first by default, as OpenAI lists.
    assert await page(limit=2) == ([ids[4], ids[3]], True)
    assert await page(limit=2, after=ids[3]) == ([ids[2], ids[1]], True)
    assert await page(limit=2, after=ids[1]) == ([ids[0]], False)
    assert await page(after=ids[0]) == ([], False)
    assert await page(limit=2, order="asc") == ([ids[0], ids[1]], True)
    assert await page(limit=2, order="asc", after=ids[1]) == ([ids[2], ids[3]], True)
    assert await page(limit=2, order="asc", after=ids[3]) == ([ids[4]], False)
    assert await page(limit=5) == (ids[::-1], False)
    assert await page(limit=4, order="asc", after=ids[0]) == (ids[1:], False)
    with pytest.raises(ValueError, match="unknown"):
        await store.list(after=new_job_id())
    with pytest.raises(ValueError):
        await store.list(limit=0)


async def test_claim_takes_the_oldest_queued_job(store: JobStore, clock: FakeClock) -> None:
    assert await store.claim("w", lease_s=30) is None
    jobs = await create_jobs(store, 3)  # the same created_at: insertion order decides
    claimed = await store.claim("w-1", lease_s=30)
    assert claimed == replace(jobs[0], status="in_progress", attempts=1, worker_id="w-1", lease_expires_at=T0 + 30)
    assert await store.get(jobs[0].id) == claimed
    assert [(await store.claim("w-2", lease_s=30)) is not None for _ in range(3)] == [True, True, False]
    page, _ = await store.list(order="asc")
    assert [(job.status, job.worker_id) for job in page] == [
        ("in_progress", "w-1"), ("in_progress", "w-2"), ("in_progress", "w-2")]


async def test_concurrent_claimers_take_each_job_exactly_once(open_store: StoreFactory) -> None:
    first, second = await open_store(), await open_store()  # two processes / replicas on the same data
    jobs = await create_jobs(first, 30)

    async def claimer(store: JobStore, worker_id: str) -> list[str]:
        taken = []
        while (job := await store.claim(worker_id, lease_s=60)) is not None:
            assert job.worker_id == worker_id and job.attempts == 1
            taken.append(job.id)
        return taken

    results = await asyncio.gather(*(claimer(store, f"w-{i}") for i in range(8) for store in (first, second)))
    claimed = [job_id for taken in results for job_id in taken]
    assert sorted(claimed) == sorted(job.id for job in jobs)
    assert sum(1 for taken in results if taken) > 1  # the claimers really did run side by side


_CLAIM_SCRIPT = """
import asyncio, sys
from dgate.frontend.jobs import open_job_store

async def main():
    store = await open_job_store(sys.argv[1], table=sys.argv[2])
    while (job := await store.claim(sys.argv[3], lease_s=60)) is not None:
        print(job.id, flush=True)
    await store.close()

asyncio.run(main())
"""


async def test_sqlite_processes_sharing_a_file_never_claim_the_same_job(tmp_path: Path) -> None:
    url, table = f"sqlite://{tmp_path / 'jobs.db'}", "video_jobs"
    store = await open_job_store(url, table=table)
    jobs = await create_jobs(store, 200)
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _CLAIM_SCRIPT, url, table, f"p-{i}",
                                             stdout=asyncio.subprocess.PIPE)
        for i in range(3)
    ]
    outputs = await asyncio.gather(*(process.communicate() for process in processes))
    assert [process.returncode for process in processes] == [0, 0, 0]
    claimed = [line for stdout, _ in outputs for line in stdout.decode().split()]
    assert sorted(claimed) == sorted(job.id for job in jobs)
    await store.close()


async def test_progress_only_by_the_lease_owner(store: JobStore, clock: FakeClock) -> None:
    job, queued = await create_jobs(store, 2)
    await store.claim("w-1", lease_s=30)
    clock.now += 20
    assert not await store.progress(job.id, "w-2", 50, lease_s=30)
    assert not await store.progress(queued.id, "w-1", 50, lease_s=30)  # never claimed
    assert await store.progress(job.id, "w-1", 50, lease_s=30)
    current = await store.get(job.id)
    assert current is not None
    assert (current.progress, current.lease_expires_at, current.status) == (50, T0 + 50, "in_progress")
    with pytest.raises(ValueError):
        await store.progress(job.id, "w-1", 101, lease_s=30)


async def test_complete_and_fail(store: JobStore, clock: FakeClock) -> None:
    done, broken, invalid = await create_jobs(store, 3)
    await store.claim("w-1", lease_s=30)
    await store.claim("w-2", lease_s=30)
    clock.now += 5.7
    assets = {"video": f"{done.id}.mp4", "thumbnail": f"{done.id}.webp"}
    assert not await store.complete(done.id, "w-2", assets, expires_at=int(T0) + 3600)
    assert await store.complete(done.id, "w-1", assets, expires_at=int(T0) + 3600)
    assert await store.get(done.id) == replace(
        done, status="completed", progress=100, completed_at=int(T0 + 5.7), expires_at=int(T0) + 3600,
        assets=assets, attempts=1)
    assert not await store.complete(done.id, "w-1", assets, expires_at=0)  # once only
    assert not await store.fail(done.id, None, "late", "a finished job stays finished")

    assert not await store.fail(broken.id, "w-1", "decode", "not yours")
    assert await store.fail(broken.id, "w-2", "decode", "VAE failed")
    failed = await store.get(broken.id)
    assert failed is not None
    assert (failed.status, failed.error, failed.worker_id, failed.completed_at) == (
        "failed", {"code": "decode", "message": "VAE failed"}, None, int(T0 + 5.7))

    assert await store.fail(invalid.id, None, "invalid_request", "bad size", expires_at=int(T0) + 60)
    rejected = await store.get(invalid.id)
    assert rejected is not None and (rejected.status, rejected.expires_at) == ("failed", int(T0) + 60)
    assert await store.claim("w-3", lease_s=30) is None


async def test_a_deleted_job_cannot_be_claimed_or_updated(store: JobStore) -> None:
    running, gone, waiting = await create_jobs(store, 3)
    await store.claim("w-1", lease_s=30)
    deleted = await store.delete(running.id)
    assert deleted is not None and (deleted.id, deleted.status) == (running.id, "in_progress")
    assert not await store.progress(running.id, "w-1", 10, lease_s=30)
    assert not await store.complete(running.id, "w-1", {}, expires_at=0)
    assert not await store.fail(running.id, None, "x", "y")
    assert await store.get(running.id) is None
    assert await store.delete(running.id) is None

    assert await store.delete(gone.id) is not None
    claimed = await store.claim("w-2", lease_s=30)
    assert claimed is not None and claimed.id == waiting.id
    assert [job.id for job in (await store.list())[0]] == [waiting.id]


async def test_count_queued_counts_the_jobs_waiting_for_a_worker(store: JobStore) -> None:
    assert await store.count_queued() == 0
    first, second, _ = await create_jobs(store, 3)
    assert await store.count_queued() == 3
    await store.claim("w-1", lease_s=30)
    await store.delete(second.id)
    assert await store.count_queued() == 1


async def test_recover_requeues_expired_leases_then_fails_them(store: JobStore, clock: FakeClock) -> None:
    short, long, fresh = await create_jobs(store, 3)
    await store.claim("w-1", lease_s=10)
    await store.claim("w-2", lease_s=100)
    assert await store.recover(max_attempts=2) == (0, 0)

    clock.now += 50  # short's lease ran out
    assert await store.recover(max_attempts=2) == (1, 0)
    requeued = await store.get(short.id)
    assert requeued is not None
    assert (requeued.status, requeued.worker_id, requeued.lease_expires_at, requeued.attempts) == (
        "queued", None, None, 1)
    assert not await store.progress(short.id, "w-1", 10, lease_s=10)  # the old worker lost it

    again = await store.claim("w-3", lease_s=10)  # requeued jobs keep their place: before `fresh`
    assert again is not None and (again.id, again.attempts) == (short.id, 2)

    clock.now += 200  # both leases ran out; short is at max_attempts
    assert await store.recover(max_attempts=2, failed_expires_at=int(clock.now) + 60) == (1, 1)
    failed = await store.get(short.id)
    assert failed is not None
    assert (failed.status, failed.error and failed.error["code"], failed.completed_at, failed.expires_at) == (
        "failed", INTERRUPTED, int(clock.now), int(clock.now) + 60)
    back = await store.get(long.id)
    assert back is not None and back.status == "queued"
    untouched = await store.get(fresh.id)
    assert untouched == fresh


async def test_expired_lists_finished_jobs_past_their_expiry(store: JobStore) -> None:
    early, late, failed, pending = await create_jobs(store, 4)
    for _ in (early, late, failed):
        await store.claim("w", lease_s=30)
    await store.complete(early.id, "w", {"video": "e.mp4"}, expires_at=100)
    await store.complete(late.id, "w", {"video": "l.mp4"}, expires_at=300)
    await store.fail(failed.id, "w", "x", "y", expires_at=200)
    assert await store.expired(99) == []
    assert [job.id for job in await store.expired(100)] == [early.id]
    assert [job.id for job in await store.expired(250)] == [early.id, failed.id]
    expired = await store.expired(10**10)
    assert [job.id for job in expired] == [early.id, late.id, failed.id]
    assert expired[1].assets == {"video": "l.mp4"}


async def test_jobs_survive_closing_and_reopening_the_store(open_store: StoreFactory) -> None:
    store = await open_store()
    first, second = await create_jobs(store, 2)
    claimed = await store.claim("w-1", lease_s=30)
    await store.close()

    reopened = await open_store()
    assert await reopened.get(first.id) == claimed
    assert await reopened.get(second.id) == second
    assert [job.id for job in (await reopened.list(order="asc"))[0]] == [first.id, second.id]
    next_job = await reopened.claim("w-2", lease_s=30)
    assert next_job is not None and next_job.id == second.id


async def test_open_job_store_urls(tmp_path: Path) -> None:
    bare = await open_job_store(str(tmp_path / "nested" / "bare.db"))
    await bare.create(make_job())
    await bare.close()
    assert (tmp_path / "nested" / "bare.db").is_file()
    for url in ("mysql://localhost/jobs", "", "sqlite://", "redis://x"):
        with pytest.raises(ValueError):
            await open_job_store(url)
    with pytest.raises(ValueError, match="table"):
        await open_job_store(str(tmp_path / "t.db"), table="jobs; DROP TABLE x")


def test_new_job_ids_have_openai_shape() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(job_id) == 38 and job_id.startswith("video_") and int(job_id[6:], 16) >= 0 for job_id in ids)


# -- AssetStore --------------------------------------------------------------------------------


def test_asset_store_round_trip(tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets" / "deep")
    assert assets.root.is_dir()
    assert assets.path("video_1.mp4") is None and assets.read("video_1.mp4") is None
    path = assets.write("video_1.mp4", b"first")
    assert path == assets.path("video_1.mp4") == assets.root / "video_1.mp4"
    assert assets.write("video_1.mp4", b"second") == path
    assert assets.read("video_1.mp4") == b"second"
    assert os.listdir(assets.root) == ["video_1.mp4"]  # no temporary file left behind
    assets.delete("video_1.mp4")
    assets.delete("video_1.mp4")  # missing is fine
    assert os.listdir(assets.root) == []


def test_asset_store_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = AssetStore(tmp_path)
    assets.write("a.webp", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        assets.write("a.webp", b"new")
    assert assets.read("a.webp") == b"old"
    assert os.listdir(tmp_path) == ["a.webp"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", "/abs", ".hidden", "a..b", "a\\b", "a b",
                                  "vidéo.mp4", "x" * 201])
def test_asset_store_refuses_bad_names(tmp_path: Path, name: str) -> None:
    assets = AssetStore(tmp_path)
    for call in (lambda: assets.write(name, b"x"), lambda: assets.path(name), lambda: assets.read(name),
                 lambda: assets.delete(name)):
        with pytest.raises(ValueError):
            call()
    assert os.listdir(tmp_path) == []


async def test_release_requeues_a_running_job_at_once_without_counting_the_attempt(store: JobStore) -> None:
    job, other = await create_jobs(store, 2)
    claimed = await store.claim("w-1", lease_s=30)
    assert claimed is not None and claimed.id == job.id
    await store.progress(job.id, "w-1", 40, lease_s=30)
    assert not await store.release(job.id, "w-2")  # only its worker releases it
    assert await store.release(job.id, "w-1")
    back = await store.get(job.id)
    assert back is not None
    assert (back.status, back.progress, back.worker_id, back.lease_expires_at, back.attempts) == (
        "queued", 0, None, None, 0)
    assert not await store.progress(job.id, "w-1", 50, lease_s=30)  # the releasing worker no longer owns it
    again = await store.claim("w-3", lease_s=30)  # first in line again, before `other`
    assert again is not None and (again.id, again.attempts) == (job.id, 1)
    assert not await store.release(other.id, "w-3")  # a queued job is nobody's to release


async def test_count_by_status_counts_every_status(store: JobStore) -> None:
    assert await store.count_by_status() == {"queued": 0, "in_progress": 0, "completed": 0, "failed": 0}
    first, second, _ = await create_jobs(store, 3)
    await store.claim("w-1", lease_s=30)
    await store.complete(first.id, "w-1", {}, expires_at=0)
    await store.fail(second.id, None, "bad", "bad input")
    assert await store.count_by_status() == {"queued": 1, "in_progress": 0, "completed": 1, "failed": 1}
