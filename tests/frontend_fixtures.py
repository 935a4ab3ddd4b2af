"""Run the real frontend (uvicorn + the FastAPI app) in a background thread for tests.

Registered as a pytest plugin from tests/conftest.py; the unit tests also import `start_frontend`
directly. `start_frontend(settings)` talks to the Triton named by `settings.triton_url`; pass an
`engine` to serve a fake instead.

The unit tests' frontend on a fake engine is one set of fixtures, made per module by
`fake_frontend(FakeEngine)` (its `served`, `engine` and `client`) with the settings of the
`frontend_settings` fixture, which a module overrides to change them. (A factory rather than plugin
fixtures: the plugin's `client` is already the one on the session's Triton.)
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

import pytest
import uvicorn
from openai import OpenAI

from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.app import create_app
from dgate.frontend.engine import Engine, ModelNotFound
from dgate.frontend.settings import FrontendSettings


class FakePipelines:
    """The `PipelineCatalog` of a fake engine: `pipelines` maps each name to what it serves."""

    pipelines: dict[str, ServedPipeline]

    async def list_pipelines(self) -> list[str]:
        return sorted(self.pipelines)

    async def served_pipeline(self, name: str) -> ServedPipeline:
        if name not in self.pipelines:
            raise ModelNotFound(name)
        return self.pipelines[name]


def start_frontend(
    settings: FrontendSettings | None = None, engine: Engine | None = None, *, timeout_s: float = 15.0
) -> tuple[str, Callable[[], None]]:
    """Serve the app on a free port of `settings.host`; returns (base_url, stop) once /health answers."""
    settings = settings or FrontendSettings()
    # Bind first and hand uvicorn the socket: no window in which another process takes the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, 0))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(settings, engine), log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"frontend-{port}", daemon=True
    )
    thread.start()
    base_url = f"http://{host}:{port}"

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=1) as response:
                if response.status == 200:
                    return base_url, stop
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if not thread.is_alive() or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"the frontend did not answer {base_url}/health within {timeout_s} s")
        time.sleep(0.05)


# OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
ERROR_KEYS = {"message", "type", "param", "code"}


def assert_error_body(body: bytes, **expected: Any) -> dict[str, Any]:
    """The body is OpenAI's error shape, with `expected` field values; returns the error object."""
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == ERROR_KEYS, parsed
    for key, value in expected.items():
        assert parsed["error"][key] == value, parsed
    return parsed["error"]


def make_client(base_url: str) -> OpenAI:
    # max_retries=0: the client would otherwise retry 5xx answers and hide what the server said.
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def frontend(triton: Any) -> Iterator[str]:
    """The real frontend on the session's tritonserver (a test module may override it with settings)."""
    base_url, stop = start_frontend(FrontendSettings(triton_url=triton.ports.grpc_url))
    yield base_url
    stop()


@pytest.fixture(scope="module")
def client(frontend: str) -> Iterator[OpenAI]:
    """The official openai client on `frontend`."""
    with make_client(frontend) as openai_client:
        yield openai_client


@pytest.fixture
def frontend_launcher() -> Iterator[Callable[..., str]]:
    """`launch(settings, engine=None) -> base_url`; every frontend launched is stopped at teardown."""
    stops: list[Callable[[], None]] = []

    def launch(settings: FrontendSettings | None = None, engine: Engine | None = None) -> str:
        base_url, stop = start_frontend(settings, engine)
        stops.append(stop)
        return base_url

    yield launch
    for stop in reversed(stops):
        stop()


# --- the frontend on a fake engine (unit tests) ---------------------------------------------------------------


class ResettableFake(Protocol):
    def reset(self) -> None:
        """Back to the state a test starts from (switched-on failures off, ...)."""


F = TypeVar("F", bound=ResettableFake)


class FakeFrontend(NamedTuple):
    """The fixtures `fake_frontend` makes; a module binds them under these names."""

    served: Any
    engine: Any
    client: Any


@pytest.fixture(scope="module")
def frontend_settings(tmp_path_factory: pytest.TempPathFactory) -> FrontendSettings:
    """The settings of a module's `fake_frontend` (no video workers, a job database of its own: the
    LoRA state and quotas live there, so modules do not see each other's); a module overrides this."""
    state = tmp_path_factory.mktemp("frontend-state")
    return FrontendSettings(video_workers=0, jobs_db=f"sqlite://{state / 'jobs.db'}", assets_dir=str(state / "assets"))


def fake_frontend(make_engine: Callable[[], F]) -> FakeFrontend:
    """`served, engine, client = fake_frontend(FakeEngine)` in a test module gives it
    - `served` (module): `(base_url, engine)`, one frontend on one `make_engine()` for the module;
    - `engine`: that engine, `reset()` before and after each test;
    - `client`: the official openai client on it."""

    @pytest.fixture(scope="module")
    def served(frontend_settings: FrontendSettings) -> Iterator[tuple[str, F]]:
        fake = make_engine()
        base_url, stop = start_frontend(frontend_settings, fake)  # type: ignore[arg-type]  # a fake: part of Engine
        yield base_url, fake
        stop()

    @pytest.fixture
    def engine(served: tuple[str, F]) -> Iterator[F]:
        fake = served[1]
        fake.reset()
        yield fake
        fake.reset()

    @pytest.fixture
    def client(served: tuple[str, F]) -> Iterator[OpenAI]:
        with make_client(served[0]) as openai_client:
            yield openai_client

    return FakeFrontend(served, engine, client)
