"""API keys (frontend/auth.py) against a fake engine: the keys file and DGATE_API_KEYS, 401/403 in OpenAI's
shape, every transport (JSON, multipart, SSE, the WebSocket by subprotocol or query token), the open
routes, the admin role on the LoRA routes, video jobs visible to their creating key only, the job
stores' owner column (and its migration of older databases), `dgate keys hash`, and auth off."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from frontend_fixtures import assert_error_body, fake_frontend, make_client, start_frontend
from openai import OpenAI
from test_frontend_unit import FakeEngine
from test_streaming_unit import SteppingEngine, decode, png
from test_videos_unit import T2V_LIMITS, fake_frames, video_settings, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dgate.cli import main as dgate_main
from dgate.core.capabilities import Capabilities
from dgate.core.params import GenerationParams
from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.app import create_app
from dgate.frontend.auth import (
    KeyFileError,
    KeyRing,
    Quota,
    key_line,
    load_keys,
    parse_keys_file,
    parse_plain_keys,
    scrypt_hash,
    sha256_hash,
)
from dgate.frontend.engine import ProgressCallback
from dgate.frontend.jobs import VideoJob, new_job_id, open_job_store
from dgate.frontend.settings import FrontendSettings

ADMIN_KEY = "dg-admin-0123456789abcdef"
USER_KEY = "dg-user-0123456789abcdef"
SCRYPT_KEY = "correct horse battery staple"  # a key a person chose: kept with scrypt
PLAIN_KEY = "dg-plain-0123456789abcdef"  # from DGATE_API_KEYS


class AuthEngine(SteppingEngine):
    """Images step by step (SSE, edits), a text-to-video pipeline and the adapter check."""

    def __init__(self) -> None:
        super().__init__()
        self.pipelines["tiny-animatediff"] = ServedPipeline(T2V_LIMITS, Capabilities(task="text-to-video"))

    async def generate_video(self, name: str, params: GenerationParams, image: np.ndarray | None,
                             on_progress: ProgressCallback | None = None) -> np.ndarray:
        for step in range(params.num_inference_steps):
            await asyncio.sleep(0.001)
            if on_progress is not None:
                await on_progress((step + 1) / params.num_inference_steps)
        return fake_frames(params, image)

    async def check_adapters(self, name: str, lora: str) -> dict:
        return {"pipeline": name, "adapters": [{"path": "fox.safetensors", "bytes": 12}]}


served, engine = fake_frontend(AuthEngine)[:2]


@pytest.fixture(scope="module")
def frontend_settings(tmp_path_factory: pytest.TempPathFactory) -> FrontendSettings:
    root = tmp_path_factory.mktemp("auth")
    (root / "loras").mkdir()
    (root / "loras" / "fox.safetensors").write_bytes(b"fake adapter")
    keys = root / "keys.txt"
    keys.write_text("\n".join([
        "# D-Gate API keys",
        key_line(sha256_hash(ADMIN_KEY), name="ops", role="admin"),
        f"{sha256_hash(USER_KEY)} name=alice requests_per_minute=60  # a comment",
        key_line(scrypt_hash(SCRYPT_KEY, n=2**10), name="bob"),
        "",
    ]))
    return video_settings(root, api_keys_file=str(keys), api_keys=f"{PLAIN_KEY} name=carol",
                          lora_dir=str(root / "loras"), default_model="tiny-sd")


@pytest.fixture
def base_url(served: tuple[str, AuthEngine]) -> str:
    return served[0]


def client_for(base_url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def admin(base_url: str) -> Iterator[OpenAI]:
    with client_for(base_url, ADMIN_KEY) as session:
        yield session


@pytest.fixture
def user(base_url: str) -> Iterator[OpenAI]:
    with client_for(base_url, USER_KEY) as session:
        yield session


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generation(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny-sd", "prompt": "a fox", "size": "64x64", "num_inference_steps": 2} | extra


def openai_generation(steps: int = 2, **extra: Any) -> dict[str, Any]:
    """`generation()` as the openai client's arguments (D-Gate's extensions in extra_body)."""
    return {"model": "tiny-sd", "prompt": "a fox", "size": "64x64",
            "extra_body": {"num_inference_steps": steps}} | extra


def assert_401(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    return assert_error_body(response.content, code="invalid_api_key", type="invalid_request_error", param=None)


# --- keys: the file, DGATE_API_KEYS, verification -----------------------------------------------------------


def test_the_keys_file_and_plain_keys_are_parsed_with_names_roles_and_quotas() -> None:
    text = "\n".join([
        "# comment", "", f"{sha256_hash('a')} name=ops role=admin",
        f"{sha256_hash('b').upper()} requests_per_minute=60 in_flight=2 megapixels_per_day=1.5",
        scrypt_hash("c", n=2**4) + " role=user   # trailing comment",
    ])
    ops, quota, scrypted = (entry.key for entry in parse_keys_file(text))
    assert (ops.name, ops.role, ops.quota) == ("ops", "admin", Quota())
    assert (quota.name, quota.role) == (None, "user")
    assert quota.quota == Quota(requests_per_minute=60, in_flight=2, megapixels_per_day=1.5)
    assert scrypted.role == "user" and len({ops.id, quota.id, scrypted.id}) == 3
    assert all(key.id.startswith("key_") and sha256_hash("a") not in key.id for key in (ops, quota, scrypted))
    (plain,) = (entry.key for entry in parse_plain_keys(" k-1 role=admin name=x , "))
    assert (plain.name, plain.role) == ("x", "admin")
    # The same key from the file (hashed) and from the variable (plain) is the same owner.
    assert parse_plain_keys("b")[0].key.id == quota.id


@pytest.mark.parametrize(("line", "message"), [
    ("abc123", "SHA-256 hex digest"),
    (f"{sha256_hash('a')} role=root", "role='root'"),
    (f"{sha256_hash('a')} colour=red", "unknown option 'colour'"),
    (f"{sha256_hash('a')} name", "not name=value"),
    (f"{sha256_hash('a')} name=a name=b", "name is given twice"),
    (f"{sha256_hash('a')} in_flight=many", "in_flight='many' is not a number"),
    (f"{sha256_hash('a')} in_flight=0", "in_flight must be positive"),
    ("scrypt$1000$8$1$00$00", "scrypt$N$r$p"),
])
def test_a_malformed_line_is_refused_with_its_place(line: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=r"keys\.txt:2: .*" + message.replace("$", r"\$").replace("(", r"\(")):
        parse_keys_file(f"# keys\n{line}\n", "keys.txt")


def test_duplicates_an_empty_file_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    line = sha256_hash("a")
    with pytest.raises(KeyFileError, match="same key"):
        KeyRing(parse_keys_file(f"{line}\n{line} name=b"))
    with pytest.raises(KeyFileError, match="same name"):
        KeyRing(parse_keys_file(f"{line} name=x\n{sha256_hash('b')} name=x"))
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(KeyFileError, match="holds no key"):
        load_keys(str(tmp_path / "empty.txt"), None)
    with pytest.raises(KeyFileError, match="missing.txt"):
        load_keys(str(tmp_path / "missing.txt"), None)
    with pytest.raises(KeyFileError, match="DGATE_API_KEYS entry 2"):  # the frontend does not start
        create_app(FrontendSettings(api_keys="good-key,bad-key role=boss"), FakeEngine())  # type: ignore[arg-type]


async def test_verify_finds_sha256_and_scrypt_keys_and_nothing_else() -> None:
    ring = KeyRing(parse_keys_file(f"{sha256_hash('s3cret')} name=a\n{scrypt_hash('pass phrase', n=2**8)} name=b"))
    assert ring.enabled and len(ring) == 2 and not KeyRing().enabled
    assert (await ring.verify("s3cret")).name == "a"  # type: ignore[union-attr]
    assert (await ring.verify("pass phrase")).name == "b"  # type: ignore[union-attr]
    assert (await ring.verify("pass phrase")).name == "b"  # type: ignore[union-attr]  # remembered
    for wrong in ("", "s3cre", "s3cret ", "S3CRET", "pass  phrase", sha256_hash("s3cret")):
        assert await ring.verify(wrong) is None


def test_dgate_keys_hash_prints_a_line_the_frontend_accepts(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert dgate_main(["keys", "hash", "--new", "--name", "ops", "--role", "admin"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[-1]
    assert key.startswith("dg-") and len(key) > 40 and key not in out
    (entry,) = parse_keys_file(out)
    assert (entry.key.name, entry.key.role) == ("ops", "admin")
    assert asyncio.run(KeyRing([entry]).verify(key)) == entry.key
    monkeypatch.setattr("sys.stdin", io.StringIO("a key people chose\n"))
    assert dgate_main(["keys", "hash", "--scrypt"]) == 0
    (entry,) = parse_keys_file(capsys.readouterr().out)
    assert entry.scrypt is not None and entry.key.role == "user"
    assert asyncio.run(KeyRing([entry]).verify("a key people chose")) == entry.key


# --- HTTP: 401, the keys that work, the open routes -----------------------------------------------------------


def test_no_key_or_a_wrong_key_is_401_in_openai_shape(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        missing = assert_401(http.post("/v1/images/generations", json=generation()))
        assert "Authorization: Bearer" in missing["message"]
        assert assert_401(http.get("/v1/models", headers=headers("dg-wrong")))["message"] == \
            "Incorrect API key provided."
        for bad in ({"Authorization": USER_KEY}, {"Authorization": "Basic " + USER_KEY}, {"Authorization": "Bearer"},
                    {"X-Api-Key": USER_KEY}):
            assert_401(http.get("/v1/models", headers=bad))
        assert_401(http.get("/v1/models", params={"api_key": USER_KEY}))  # a query token is for WebSockets only
        assert_401(http.get("/v1/no-such-route"))  # a key first: unknown routes are not told apart
        assert_401(http.delete(f"/v1/videos/{new_job_id()}"))
    with client_for(base_url, "dg-wrong") as wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.images.generate(**openai_generation())
    assert caught.value.code == "invalid_api_key"


def test_an_unauthenticated_body_is_not_read(base_url: str) -> None:
    """401 before the body: a malformed one does not turn it into a 400, nor does a large one get read."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert_401(http.post("/v1/images/generations", content=b"{not json",
                             headers={"Content-Type": "application/json"}))
        assert_401(http.post("/v1/images/edits", files={"image": ("a.png", b"x" * (4 << 20), "image/png")}))


def test_every_configured_key_works(base_url: str, engine: AuthEngine) -> None:
    for key in (ADMIN_KEY, USER_KEY, SCRYPT_KEY, PLAIN_KEY):
        with client_for(base_url, key) as session:
            result = session.images.generate(**openai_generation())
            assert len(result.data) == 1 and decode(result.data[0].b64_json).size == (64, 64)
            assert [model.id for model in session.models.list()][:1] == ["tiny-animatediff"]
    assert len(engine.calls) == 4


def test_health_ready_metrics_the_page_the_docs_and_url_images_stay_open(base_url: str, user: OpenAI) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for path in ("/health", "/ready", "/metrics", "/", "/static/playground.js", "/static/playground.css",
                     "/docs", "/redoc", "/openapi.json"):
            assert http.get(path).status_code == 200, path
        assert http.get("/static/nope.js").status_code == 404
        schemes = http.get("/openapi.json").json()["components"]["securitySchemes"]
        assert schemes == {"API key": {"type": "http", "scheme": "bearer", "description": schemes["API key"][
            "description"]}}
        # `url` images are capability links: 128 random bits, expiring; an <img src> loads them without a header.
        url = user.images.generate(**openai_generation(response_format="url")).data[0].url
        assert url is not None and len(url.rsplit("img_", 1)[1]) == 32
        image = http.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert http.get(f"/v1/files/img_{'0' * 32}").status_code == 404


# --- every transport ----------------------------------------------------------------------------------------


def test_sse_streaming_with_the_key(user: OpenAI, engine: AuthEngine) -> None:
    stream = user.images.generate(**openai_generation(4), stream=True, partial_images=1)
    events = [event.type for event in stream]
    assert events == ["image_generation.partial_image", "image_generation.completed"]
    assert engine.calls[-1].partial_images == 1


def test_multipart_edits_and_variations_with_the_key(user: OpenAI, base_url: str) -> None:
    image = png(np.full((64, 64, 3), (10, 200, 30), np.uint8))
    result = user.images.edit(image=("in.png", image, "image/png"), prompt="greener", model="tiny-sd", n=2)
    assert len(result.data) == 2 and decode(result.data[0].b64_json).size == (64, 64)
    assert len(user.images.create_variation(image=("in.png", image, "image/png"), model="tiny-sd").data) == 1
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert_401(http.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("in.png", image, "image/png")}))


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/v1/ws/generate" + query


def ws_exchange(url: str, **kw: Any) -> tuple[list[dict[str, Any]], int | None, str | None]:
    with connect(url, open_timeout=10, close_timeout=5, **kw) as websocket:
        chosen = websocket.subprotocol
        websocket.send(json.dumps(generation(num_inference_steps=3)))
        messages = []
        try:
            while True:
                messages.append(json.loads(websocket.recv(timeout=10)))
        except ConnectionClosed:
            return messages, websocket.close_code, chosen


@pytest.mark.parametrize(("how", "kw", "chosen"), [
    ("subprotocol beside dgate", {"subprotocols": ["dgate", f"openai-insecure-api-key.{USER_KEY}"]}, "dgate"),
    ("subprotocol alone", {"subprotocols": [f"openai-insecure-api-key.{USER_KEY}"]},
     f"openai-insecure-api-key.{USER_KEY}"),
    ("query", {"query": f"?api_key={USER_KEY}"}, None),
    ("header", {"additional_headers": headers(USER_KEY)}, None),
])
def test_the_websocket_takes_the_key_as_subprotocol_query_or_header(base_url: str, how: str, kw: dict[str, Any],
                                                                     chosen: str | None) -> None:
    query = kw.pop("query", "")
    messages, code, subprotocol = ws_exchange(ws_url(base_url, query), **kw)
    assert code == 1000 and subprotocol == chosen, how
    assert [m["type"] for m in messages] == ["progress"] * 3 + ["result"]


@pytest.mark.parametrize("kw", [{}, {"subprotocols": ["dgate", "openai-insecure-api-key.dg-wrong"]},
                                {"query": "?api_key=dg-wrong"}])
def test_the_websocket_without_a_valid_key_gets_the_error_and_1008(base_url: str, engine: AuthEngine,
                                                                    kw: dict[str, Any]) -> None:
    query = kw.pop("query", "")
    with connect(ws_url(base_url, query), open_timeout=10, close_timeout=5, **kw) as websocket:
        (message,) = [json.loads(websocket.recv(timeout=10))]
        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=10)
        assert websocket.close_code == 1008 and websocket.close_reason == "invalid_api_key"
    assert message["type"] == "error" and message["error"]["code"] == "invalid_api_key"
    assert not engine.calls


# --- the admin role -------------------------------------------------------------------------------------------


ADMIN_ROUTES = [
    ("POST", "/v1/set_lora", {"lora_nickname": "fox"}),
    ("POST", "/v1/merge_lora_weights", {}),
    ("POST", "/v1/unmerge_lora_weights", {}),
    ("POST", "/v1/loras/load", {"name": "fox"}),
    ("POST", "/v1/loras/unload", {"name": "fox"}),
    ("DELETE", "/v1/loras/fox", None),
]


def test_lora_management_needs_the_admin_role(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for method, path, body in ADMIN_ROUTES:
            for key in (USER_KEY, SCRYPT_KEY, PLAIN_KEY):
                refused = http.request(method, path, json=body, headers=headers(key))
                assert refused.status_code == 403, (path, refused.text)
                assert_error_body(refused.content, code="insufficient_permissions", type="invalid_request_error")
            assert_401(http.request(method, path, json=body))
        admin = headers(ADMIN_KEY)
        assert http.post("/v1/loras/load", json={"name": "fox"}, headers=admin).json()["status"] == "loaded"
        assert http.post("/v1/set_lora", json={"lora_nickname": "fox"}, headers=admin).status_code == 200
        assert http.post("/v1/merge_lora_weights", json={}, headers=admin).status_code == 200
        assert http.post("/v1/unmerge_lora_weights", json={}, headers=admin).status_code == 200
        # Users read the lists (they name adapters in their requests' `lora`).
        assert [a["name"] for a in http.get("/v1/loras/list", headers=headers(USER_KEY)).json()["data"]] == ["fox"]
        assert http.get("/v1/list_loras", headers=headers(USER_KEY)).json()["active"]
        assert http.post("/v1/loras/unload", json={"name": "fox"}, headers=admin).json()["status"] == "unloaded"
        assert http.delete("/v1/loras/fox", headers=admin).status_code == 404  # gone already


# --- video jobs belong to their key ---------------------------------------------------------------------------


def test_a_video_is_visible_and_deletable_only_by_its_key(base_url: str, user: OpenAI, admin: OpenAI) -> None:
    video = user.videos.create(model="tiny-animatediff", prompt="a fox runs")
    theirs = admin.videos.create(model="tiny-animatediff", prompt="an owl")
    wait_for(user, video.id, "completed")
    wait_for(admin, theirs.id, "completed")
    with httpx.Client(base_url=base_url, timeout=10) as http:
        for key in (ADMIN_KEY, PLAIN_KEY):  # the admin role sees no one else's jobs either
            other = headers(key)
            for method, path in (("GET", f"/v1/videos/{video.id}"), ("GET", f"/v1/videos/{video.id}/content"),
                                 ("GET", f"/v1/videos/{video.id}/content?variant=thumbnail"),
                                 ("DELETE", f"/v1/videos/{video.id}")):
                answer = http.request(method, path, headers=other)
                assert answer.status_code == 404, (method, path)
                assert_error_body(answer.content, code="video_not_found", param="video_id")
            remix = http.post(f"/v1/videos/{video.id}/remix", json={"prompt": "x"}, headers=other)
            assert remix.status_code == 404
            listed = http.get("/v1/videos", headers=other).json()
            assert video.id not in [item["id"] for item in listed["data"]]
            assert http.get("/v1/videos", params={"after": video.id}, headers=other).status_code == 400
        assert [item.id for item in user.videos.list()] == [video.id]
        assert [item.id for item in admin.videos.list()] == [theirs.id]
    assert user.videos.download_content(video.id).read()[4:8] == b"ftyp"
    remixed = user.videos.remix(video.id, prompt="a fox walks")
    assert remixed.remixed_from_video_id == video.id
    assert {item.id for item in user.videos.list()} == {video.id, remixed.id}
    wait_for(user, remixed.id, "completed")
    assert user.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        user.videos.retrieve(video.id)
    assert admin.videos.retrieve(theirs.id).status == "completed"


# --- the job stores' owner column -----------------------------------------------------------------------------


def make_job(owner: str | None) -> VideoJob:
    return VideoJob(id=new_job_id(), model="tiny-video", prompt="p", seconds="4", size="64x64",
                    created_at=1_700_000_000, request={"steps": 2}, owner=owner)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def test_stores_keep_owners_and_list_each_owners_jobs(store_url: str) -> None:
    store = await open_job_store(store_url, table=f"jobs_{uuid.uuid4().hex[:12]}")
    try:
        jobs = [make_job(owner) for owner in ("key_a", "key_b", "key_a", None, "key_a")]
        for job in jobs:
            await store.create(job)
        assert await store.get(jobs[0].id) == jobs[0]
        mine = [job.id for job in jobs if job.owner == "key_a"]
        page, more = await store.list(owner="key_a", order="asc", limit=2)
        assert [job.id for job in page] == mine[:2] and more
        page, more = await store.list(owner="key_a", order="asc", after=mine[1])
        assert [job.id for job in page] == mine[2:] and not more
        page, more = await store.list(owner="key_a", after=mine[2])  # desc
        assert [job.id for job in page] == mine[1::-1] and not more
        with pytest.raises(ValueError, match="unknown video id"):  # another owner's id is no cursor
            await store.list(owner="key_a", after=jobs[1].id)
        assert len((await store.list())[0]) == 5  # no owner: every job (auth off)
    finally:
        await store.close()


OLD_SQLITE_SCHEMA = """
CREATE TABLE video_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, model TEXT NOT NULL, prompt TEXT NOT NULL,
    seconds TEXT NOT NULL, size TEXT NOT NULL, created_at INTEGER NOT NULL, request TEXT NOT NULL,
    status TEXT NOT NULL, progress INTEGER NOT NULL, completed_at INTEGER, expires_at INTEGER, error TEXT,
    remixed_from_video_id TEXT, assets TEXT NOT NULL, attempts INTEGER NOT NULL, worker_id TEXT,
    lease_expires_at REAL
);
"""
OLD_ROW = ("video_" + "1" * 32, "tiny-video", "old", "4", "64x64", 1_700_000_000, "{}", "queued", 0, None, None,
           None, None, "{}", 0, None, None)


async def test_an_older_sqlite_database_gains_the_owner_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
        conn.execute("INSERT INTO video_jobs (id, model, prompt, seconds, size, created_at, request, status, "
                     "progress, completed_at, expires_at, error, remixed_from_video_id, assets, attempts, worker_id, "
                     f"lease_expires_at) VALUES ({', '.join('?' * len(OLD_ROW))})", OLD_ROW)
    conn.close()
    for _ in range(2):  # and opening it again changes nothing
        store = await open_job_store(f"sqlite://{path}")
        try:
            old = await store.get(OLD_ROW[0])
            assert old is not None and old.prompt == "old" and old.owner is None
            new = make_job("key_a")
            await store.create(new)
            assert await store.get(new.id) == new
            assert new.id in [job.id for job in (await store.list(owner="key_a"))[0]]
            assert OLD_ROW[0] not in [job.id for job in (await store.list(owner="key_a"))[0]]
        finally:
            await store.close()


async def test_an_older_postgres_table_gains_the_owner_column(postgres_url: str) -> None:
    from psycopg import AsyncConnection

    table = f"jobs_{uuid.uuid4().hex[:12]}"
    async with await AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(OLD_SQLITE_SCHEMA.replace("video_jobs", table)
                           .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
                           .replace("REAL", "DOUBLE PRECISION"))
        await conn.execute(f"INSERT INTO {table} (id, model, prompt, seconds, size, created_at, request, status, "
                           "progress, completed_at, expires_at, error, remixed_from_video_id, assets, attempts, "
                           f"worker_id, lease_expires_at) VALUES ({', '.join(['%s'] * len(OLD_ROW))})", OLD_ROW)
    for _ in range(2):
        store = await open_job_store(postgres_url, table=table)
        try:
            old = await store.get(OLD_ROW[0])
            assert old is not None and old.owner is None
            new = make_job("key_b")
            await store.create(new)
            assert new.id in [job.id for job in (await store.list(owner="key_b"))[0]]
            assert len((await store.list())[0]) == 1 + len((await store.list(owner="key_b"))[0])
        finally:
            await store.close()


# --- auth off ------------------------------------------------------------------------------------------------


def test_without_keys_auth_is_off_and_the_start_says_so_loudly(caplog: pytest.LogCaptureFixture,
                                                                tmp_path: Path) -> None:
    with caplog.at_level(logging.INFO, logger="dgate.frontend.auth"):
        base_url, stop = start_frontend(video_settings(tmp_path, video_workers=0), AuthEngine())  # type: ignore[arg-type]
        try:
            with make_client(base_url) as anyone:  # api_key="x": not checked
                assert anyone.images.generate(**openai_generation()).data
            with httpx.Client(base_url=base_url, timeout=10) as http:
                assert http.post("/v1/loras/load", json={"name": "fox"}).status_code != 403
        finally:
            stop()
    (warning,) = [r for r in caplog.records if r.name == "dgate.frontend.auth"]
    assert warning.levelno == logging.WARNING and "AUTH IS OFF" in warning.getMessage()


def test_with_keys_the_start_logs_how_many(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    settings = video_settings(tmp_path, video_workers=0, api_keys=f"{USER_KEY},{ADMIN_KEY} role=admin")
    with caplog.at_level(logging.INFO, logger="dgate.frontend.auth"):
        base_url, stop = start_frontend(settings, AuthEngine())  # type: ignore[arg-type]
        stop()
    (record,) = [r for r in caplog.records if r.name == "dgate.frontend.auth"]
    assert record.levelno == logging.INFO and "2 key(s)" in record.getMessage()
    assert USER_KEY not in caplog.text and ADMIN_KEY not in caplog.text
    assert USER_KEY not in repr(settings)  # a SecretStr
