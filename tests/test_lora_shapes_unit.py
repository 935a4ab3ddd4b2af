"""The LoRA request shapes of vLLM-Omni and SGLang beside D-Gate's own, against a fake engine.

Each shape is sent as those servers' users send it (plain JSON with httpx/requests, the official
openai client's `extra_body`): vLLM-Omni's `lora` object `{name, path, scale}` and lists of them,
SGLang's `set_lora` with an absolute `lora_path`. Absolute paths must lie under an adapter root
(the adapters directory, `DGATE_LORA_DIRS`); the fake engine re-checks what reaches it with the
core the Triton models use, as `dgate_lora` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from frontend_fixtures import assert_error_body, fake_frontend
from openai import OpenAI
from test_frontend_unit import FakeEngine

from dgate.core.errors import InvalidRequestError
from dgate.core.lora.request import AdapterRef, decode_adapters, resolve_adapter
from dgate.frontend.schemas import ImageGenerationRequest, LoraObject, parse_lora
from dgate.frontend.settings import FrontendSettings


@dataclass(frozen=True)
class Roots:
    """loras/ (the adapters directory), shared/ and team/ (DGATE_LORA_DIRS), outside/ (no root)."""

    loras: Path
    shared: Path
    team: Path
    outside: Path

    @property
    def extra(self) -> tuple[Path, Path]:
        return self.shared, self.team


def _adapter(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"fake adapter")  # the fake engine never reads it
    return path


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    base = tmp_path_factory.mktemp("lora-roots")
    tree = Roots(base / "loras", base / "shared", base / "team", base / "outside")
    _adapter(tree.loras / "fox.safetensors")
    _adapter(tree.shared / "a.safetensors")
    _adapter(tree.shared / "style" / "pytorch_lora_weights.safetensors")  # a diffusers folder
    _adapter(tree.team / "b.safetensors")
    secret = _adapter(tree.outside / "secret.safetensors")
    (tree.shared / "escape.safetensors").symlink_to(secret)
    (tree.loras / "escape.safetensors").symlink_to(secret)
    return tree


class LoraEngine(FakeEngine):
    """FakeEngine + `dgate_lora`'s check: every path of the `lora` text re-resolved under the same roots."""

    roots: Roots | None = None

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []

    async def check_adapters(self, name: str, lora: str) -> dict:
        await self.served_pipeline(name)
        assert self.roots is not None
        self.checked.append(lora)
        adapters = [{"path": ref.path, "bytes": resolve_adapter(self.roots.loras, ref.path, self.roots.extra)
                     .stat().st_size} for ref in decode_adapters(lora)]
        return {"pipeline": name, "adapters": adapters}

    def reset(self) -> None:
        super().reset()
        self.calls.clear()


served, engine, client = fake_frontend(LoraEngine)


@pytest.fixture(scope="module")
def frontend_settings(roots: Roots) -> FrontendSettings:
    LoraEngine.roots = roots
    return FrontendSettings(video_workers=0, lora_dir=str(roots.loras),
                            lora_dirs=f"{roots.shared}::{roots.team}", default_model="tiny-sd")


@pytest.fixture
def http(served: tuple[str, LoraEngine]) -> Any:
    with httpx.Client(base_url=served[0], timeout=30) as session:
        yield session


@pytest.fixture(autouse=True)
def no_adapters_left(http: httpx.Client) -> Any:
    yield
    for adapter in http.get("/v1/loras/list").json()["data"]:  # out of the registry and every active set
        http.delete(f"/v1/loras/{adapter['name']}")


def generation(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny-sd", "prompt": "a fox", "size": "64x64"} | extra


def sent_lora(engine: LoraEngine) -> tuple[AdapterRef, ...]:
    """The adapters of the engine's last generation, as the Triton models decode them."""
    return decode_adapters(engine.calls[-1][1].lora)


# --- the shapes --------------------------------------------------------------------------------------


def test_vllm_omni_object_with_an_absolute_path_under_a_root(http: httpx.Client, engine: LoraEngine,
                                                            roots: Roots) -> None:
    path = str(roots.shared / "a.safetensors")
    answer = http.post("/v1/images/generations", json=generation(lora={"name": "a", "path": path, "scale": 32.0}))
    assert answer.status_code == 200, answer.text
    assert sent_lora(engine) == (AdapterRef(path, 32.0),)
    # The path travels absolute and resolves, in the core the Triton models use, to the same file.
    assert resolve_adapter(roots.loras, sent_lora(engine)[0].path, roots.extra) == Path(path).resolve()


def test_vllm_omni_object_with_requests_relative_path_and_default_scale(served: tuple[str, LoraEngine],
                                                                       engine: LoraEngine, roots: Roots) -> None:
    answer = requests.post(f"{served[0]}/v1/images/generations", timeout=30,
                           json=generation(lora={"name": "fox", "path": "fox.safetensors"}))
    assert answer.status_code == 200, answer.text
    assert sent_lora(engine) == (AdapterRef("fox.safetensors", 1.0),)
    answer = requests.post(f"{served[0]}/v1/images/generations", timeout=30,
                           json=generation(lora={"name": "fox", "path": "fox.safetensors"}, lora_scale=0.4))
    assert answer.status_code == 200, answer.text
    assert sent_lora(engine) == (AdapterRef("fox.safetensors", 0.4),)  # lora_scale for an object without scale


def test_a_list_of_objects_and_names_mixed(http: httpx.Client, engine: LoraEngine, roots: Roots) -> None:
    a, b, style = roots.shared / "a.safetensors", roots.team / "b.safetensors", roots.shared / "style"
    body = generation(lora=[{"name": "a", "path": str(a), "scale": 0.5}, {"name": "b", "path": str(b)},
                            "fox", {"name": "style", "path": str(style), "scale": 2.0}],
                      lora_scale=[9.0, 0.7, 0.3, 9.0])
    answer = http.post("/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    assert sent_lora(engine) == (AdapterRef(str(a), 0.5), AdapterRef(str(b), 0.7),
                                 AdapterRef("fox.safetensors", 0.3), AdapterRef(str(style), 2.0))
    answer = http.post("/v1/images/generations", json=generation(lora=[]))
    assert answer.status_code == 200 and sent_lora(engine) == ()  # an explicit empty list: no adapters


def test_vllm_omni_field_spellings(http: httpx.Client, engine: LoraEngine, roots: Roots) -> None:
    path = str(roots.team / "b.safetensors")
    for lora in ({"lora_name": "b", "local_path": path, "lora_scale": 0.25},
                 {"adapter": "b", "lora_path": path, "scale": 0.25},
                 {"name": "b", "lora_local_path": path, "scale": 0.25}):
        answer = http.post("/v1/images/generations", json=generation(lora=lora))
        assert answer.status_code == 200, answer.text
        assert sent_lora(engine) == (AdapterRef(path, 0.25),)


def test_openai_client_extra_body_carries_every_shape(client: OpenAI, engine: LoraEngine, roots: Roots) -> None:
    path = str(roots.shared / "a.safetensors")
    client.images.generate(model="tiny-sd", prompt="a fox", size="64x64",
                           extra_body={"lora": "fox", "lora_scale": 0.8})  # D-Gate's own, unchanged
    assert sent_lora(engine) == (AdapterRef("fox.safetensors", 0.8),)
    client.images.generate(model="tiny-sd", prompt="a fox", size="64x64",
                           extra_body={"lora": ["fox", "fox"], "lora_scale": [0.5, 0.25]})
    assert sent_lora(engine) == (AdapterRef("fox.safetensors", 0.5), AdapterRef("fox.safetensors", 0.25))
    client.images.generate(model="tiny-sd", prompt="a fox", size="64x64",
                           extra_body={"lora": {"name": "a", "path": path, "scale": 1.5}})
    assert sent_lora(engine) == (AdapterRef(path, 1.5),)
    client.images.generate(model="tiny-sd", prompt="a fox", size="64x64",
                           extra_body={"lora": [{"name": "a", "path": path, "scale": 1.5}]})
    assert sent_lora(engine) == (AdapterRef(path, 1.5),)


def test_sglang_set_lora_with_an_absolute_path(http: httpx.Client, engine: LoraEngine, roots: Roots) -> None:
    a, b = str(roots.shared / "a.safetensors"), str(roots.team / "b.safetensors")
    answer = http.post("/v1/set_lora", json={"lora_nickname": "a", "lora_path": a, "strength": 0.8})
    assert answer.status_code == 200, answer.text
    assert answer.json()["active"]["all"][0] == {"nickname": "a", "path": a, "strength": 0.8, "target": "all",
                                                 "merged": False}
    assert decode_adapters(engine.checked[-1]) == (AdapterRef(a, 1.0),)  # checked where the Triton model checks
    assert http.post("/v1/images/generations", json=generation()).status_code == 200
    assert sent_lora(engine) == (AdapterRef(a, 0.8),)  # the active set applies to requests without `lora`
    assert http.post("/v1/images/generations", json=generation(lora="a", lora_scale=0.5)).status_code == 200
    assert sent_lora(engine) == (AdapterRef(a, 0.5),)  # the nickname now names the absolute path

    stacked = http.post("/v1/set_lora", json={"lora_nickname": ["a", "b"], "lora_path": [a, b],
                                              "strength": [0.5, 0.7]})
    assert stacked.status_code == 200, stacked.text
    assert http.post("/v1/images/generations", json=generation()).status_code == 200
    assert sent_lora(engine) == (AdapterRef(a, 0.5), AdapterRef(b, 0.7))

    loaded = http.post("/v1/loras/load", json={"name": "b2", "path": b})
    assert loaded.status_code == 200 and loaded.json()["path"] == b, loaded.text
    assert {"name": "b2", "path": b, "active_on": []} in http.get("/v1/loras/list").json()["data"]


# --- refusals ------------------------------------------------------------------------------------------


# (the path given, for the roots of the module; what the 400's message says)
REFUSED = [
    pytest.param(lambda r: str(r.outside / "secret.safetensors"),
                 "lies outside the adapters directory and the adapter roots", id="outside"),
    pytest.param(lambda r: "/etc/passwd", "lies outside", id="etc-passwd"),
    pytest.param(lambda r: f"{r.shared}/../outside/secret.safetensors", "without '..'", id="absolute-dotdot"),
    pytest.param(lambda r: "../outside/secret.safetensors", "without '..'", id="relative-dotdot"),
    pytest.param(lambda r: str(r.shared / "escape.safetensors"), "leaves the adapter roots", id="symlink-absolute"),
    pytest.param(lambda r: "escape.safetensors", "leaves the adapters directory", id="symlink-relative"),
    pytest.param(lambda r: f"file://{r.shared}/a.safetensors", "not a URL", id="file-url"),
    pytest.param(lambda r: "https://huggingface.co/user/lora/a.safetensors", "not a URL", id="https-url"),
    pytest.param(lambda r: str(r.shared / "missing.safetensors"), "no adapter", id="missing"),
]


@pytest.mark.parametrize(("given", "message"), REFUSED)
def test_paths_outside_the_roots_are_refused_in_a_generation(http: httpx.Client, engine: LoraEngine,
                                                             roots: Roots, given: Callable[[Roots], str],
                                                             message: str) -> None:
    path = given(roots)
    for lora in ({"name": "x", "path": path}, [{"name": "x", "path": path}]):
        answer = http.post("/v1/images/generations", json=generation(lora=lora))
        assert answer.status_code == 400, answer.text
        error = assert_error_body(answer.content, type="invalid_request_error", param="lora", code="invalid_value")
        assert message in error["message"]
    assert engine.calls == []


@pytest.mark.parametrize(("given", "message"), REFUSED)
def test_paths_outside_the_roots_are_refused_by_set_lora_and_load(http: httpx.Client, engine: LoraEngine,
                                                                  roots: Roots, given: Callable[[Roots], str],
                                                                  message: str) -> None:
    path = given(roots)
    before = http.get("/v1/list_loras").json()
    for route, body in (("/v1/set_lora", {"lora_nickname": "x", "lora_path": path}),
                        ("/v1/loras/load", {"name": "x", "path": path})):
        answer = http.post(route, json=body)
        assert answer.status_code == 400, answer.text
        error = assert_error_body(answer.content, type="invalid_request_error", param="lora_path",
                                  code="invalid_value")
        assert message in error["message"]
    assert http.get("/v1/list_loras").json() == before


@pytest.mark.parametrize(("lora", "param", "message"), [
    ({"path": "fox.safetensors"}, "lora.name", "Field required"),
    ({"name": "fox"}, "lora.path", "Field required"),
    ({"name": "", "path": "fox.safetensors"}, "lora.name", "at least 1 character"),
    ({"name": "fox", "path": 7}, "lora.path", "valid string"),
    ({"name": "fox", "path": "fox.safetensors", "scale": "big"}, "lora.scale", "valid number"),
    ({"name": "fox", "path": "fox.safetensors", "int_id": 3}, "lora.int_id", "Extra inputs"),
    (["fox", {"name": "fox"}], "lora.1.path", "Field required"),
    (7, "lora", "an adapter name, a {name, path, scale} object or a list of them"),
    ([["fox"]], "lora.0", "an adapter name, a {name, path, scale} object or a list of them"),
])
def test_malformed_lora_objects_name_the_field(http: httpx.Client, engine: LoraEngine, lora: Any, param: str,
                                               message: str) -> None:
    answer = http.post("/v1/images/generations", json=generation(lora=lora))
    assert answer.status_code == 400, answer.text
    error = assert_error_body(answer.content, type="invalid_request_error", param=param)
    assert message in error["message"]
    if isinstance(lora, dict):
        assert "`name` and `path` are required" in error["message"]
    assert engine.calls == []


def test_unknown_names_and_scale_counts_keep_their_errors(http: httpx.Client, engine: LoraEngine) -> None:
    answer = http.post("/v1/images/generations", json=generation(lora="nobody"))
    assert "unknown adapter" in assert_error_body(answer.content, param="lora")["message"]
    answer = http.post("/v1/images/generations", json=generation(lora=[{"name": "fox", "path": "fox.safetensors"},
                                                                       "fox"], lora_scale=[1.0]))
    assert_error_body(answer.content, param="lora_scale", message="lora_scale has 1 values for 2 adapters")
    answer = http.post("/v1/images/generations", json=generation(lora="/srv/loras/fox"))  # a name is never a path
    assert "must be relative to the adapters directory" in assert_error_body(answer.content, param="lora")["message"]
    assert engine.calls == []


# --- the schema on its own (forms send the object as JSON text) -----------------------------------------


def test_parse_lora_reads_json_text_of_forms() -> None:
    assert parse_lora('{"name": "a", "path": "/x/a.safetensors", "scale": 2}') == LoraObject(
        name="a", path="/x/a.safetensors", scale=2.0)
    assert parse_lora('[{"name": "a", "path": "a.safetensors"}, "fox"]') == [
        LoraObject(name="a", path="a.safetensors"), "fox"]
    assert parse_lora(["fox", '{"name": "b", "path": "b"}']) == ["fox", LoraObject(name="b", path="b")]
    assert parse_lora("fox") == "fox" and parse_lora(None) is None
    with pytest.raises(InvalidRequestError, match="not a valid JSON") as error:
        parse_lora('{"name": ')
    assert error.value.param == "lora"
    request = ImageGenerationRequest.model_validate({"prompt": "p", "lora": {"name": "a", "path": "a"}})
    assert request.lora == LoraObject(name="a", path="a")
