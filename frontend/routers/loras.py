"""The LoRA API: seed 004's `set_lora` / `merge_lora_weights` / `unmerge_lora_weights` /
`list_loras`, seed 002's `/v1/loras/load|unload|list`, and `DELETE /v1/loras/{name}`. Paths
(`lora_path`, `path`) are relative to the adapters directory or, as SGLang takes them, absolute
under an adapter root (`DGATE_LORA_DIR`, `DGATE_LORA_DIRS`).

Control path: every adapter is checked by the repository's `dgate_lora` Triton model (the same
reading and layer matching the components use) before the registry changes, so a bad file is a
400 and the active adapters stay as they were. Weights change in Triton per request, by refit.

The routes that change adapters need an admin key (403 for a user key); the two lists need any key
(callers name adapters in their requests' `lora`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from dgate.core.lora.request import ALL_COMPONENTS, AdapterRef, encode_adapters
from dgate.frontend.auth import admin
from dgate.frontend.engine import resolve_model
from dgate.frontend.errors import OpenAIError
from dgate.frontend.lora_registry import (
    ActiveAdapter,
    LoraState,
    activate,
    active_on,
    broadcast,
    check_unmerged,
    forget,
    set_merged,
)
from dgate.frontend.state import AppState, State

router = APIRouter(tags=["lora"])
ADMIN = [Depends(admin)]


class SetLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_nickname: str | list[str]
    lora_path: str | list[str] | None = Field(None, description="relative to the adapters directory, or "
                                              "absolute under an adapter root (as SGLang takes it); "
                                              "default: <nickname>.safetensors or <nickname>/")
    target: str | list[str] = ALL_COMPONENTS
    strength: float | list[float] = 1.0
    model: str | None = None


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = None
    strength: float | None = None
    model: str | None = None


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str | None = Field(None, description="relative to the adapters directory, or absolute under an "
                             "adapter root; default: <name>.safetensors or <name>/")
    model: str | None = None


class NameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


async def _model(state: AppState, requested: str | None) -> str:
    return await resolve_model(state.engine, requested, state.settings.default_model)


async def _check(state: AppState, model: str, adapters: list[ActiveAdapter]) -> dict[str, Any]:
    return await state.engine.check_adapters(model, encode_adapters(
        AdapterRef(a.path, 1.0, a.target) for a in adapters))


def _active_view(loras: LoraState, model: str) -> dict[str, Any]:
    by_target: dict[str, list[dict[str, object]]] = {}
    for adapter in loras.active.get(model, ()):
        by_target.setdefault(adapter.target, []).append(adapter.describe())
    return {"model": model,
            "loaded_adapters": [{"nickname": n, "path": p} for n, p in sorted(loras.loaded.items())],
            "active": by_target}


# Each change runs inside `state.loras.update`: the state is read, the adapters checked in Triton and the
# result written under one database lock, so concurrent calls (on any replica) take turns.


@router.post("/v1/set_lora", dependencies=ADMIN)
async def set_lora(body: SetLoraRequest, state: State) -> dict[str, Any]:
    model = await _model(state, body.model)
    nicknames = body.lora_nickname if isinstance(body.lora_nickname, list) else [body.lora_nickname]
    paths = broadcast("lora_path", body.lora_path, len(nicknames))
    targets = broadcast("target", body.target, len(nicknames))
    strengths = broadcast("strength", body.strength, len(nicknames))
    reports: list[Any] = []

    async def change(current: LoraState) -> LoraState:
        adapters = [ActiveAdapter(n, state.loras.path_for(current, n, p), float(s), t)
                    for n, p, t, s in zip(nicknames, paths, targets, strengths, strict=True)]
        check_unmerged(current, model)
        reports.append((await _check(state, model, adapters))["adapters"])
        return activate(current, model, adapters)

    loras = await state.loras.update(change)
    state.metrics.lora_switched(model)
    return {"status": "ok"} | _active_view(loras, model) | {"report": reports[0]}


@router.post("/v1/merge_lora_weights", dependencies=ADMIN)
async def merge_lora_weights(body: MergeRequest, state: State) -> dict[str, Any]:
    # Every applied adapter is already fused into the weights (refit): merging pins it as the
    # pipeline's state until /v1/unmerge_lora_weights, as seed 004's fuse does.
    model = await _model(state, body.model)

    async def change(current: LoraState) -> LoraState:
        return set_merged(current, model, True, body.target, body.strength)

    loras = await state.loras.update(change)
    state.metrics.lora_switched(model)
    return {"status": "ok"} | _active_view(loras, model)


@router.post("/v1/unmerge_lora_weights", dependencies=ADMIN)
async def unmerge_lora_weights(state: State, body: MergeRequest | None = None) -> dict[str, Any]:
    request = body or MergeRequest()
    model = await _model(state, request.model)

    async def change(current: LoraState) -> LoraState:
        return set_merged(current, model, False, request.target)

    loras = await state.loras.update(change)
    state.metrics.lora_switched(model)
    return {"status": "ok"} | _active_view(loras, model)


@router.get("/v1/list_loras")
async def list_loras(state: State, model: str | None = None) -> dict[str, Any]:
    name = await _model(state, model)
    return _active_view(await state.loras.state(), name)


@router.post("/v1/loras/load", dependencies=ADMIN)
async def load_lora(body: LoadRequest, state: State) -> dict[str, Any]:
    model = await _model(state, body.model)
    found: list[tuple[ActiveAdapter, dict[str, Any]]] = []

    async def change(current: LoraState) -> LoraState:
        adapter = ActiveAdapter(body.name, state.loras.path_for(current, body.name, body.path), 1.0)
        found.append((adapter, (await _check(state, model, [adapter]))["adapters"][0]))
        return replace(current, loaded={**current.loaded, body.name: adapter.path})

    await state.loras.update(change)
    adapter, report = found[0]
    return {"name": body.name, "path": adapter.path, "model": model, "status": "loaded"} | report


async def _forget(state: AppState, name: str) -> None:
    switched: list[str] = []  # the pipelines whose active set loses it

    async def change(current: LoraState) -> LoraState:
        switched.extend(active_on(current, name))
        changed = forget(current, name)
        if changed is None:
            raise OpenAIError(404, f"no adapter {name!r} is loaded", param="name", code="lora_not_found")
        return changed

    await state.loras.update(change)
    state.metrics.lora_switched(*switched)


@router.post("/v1/loras/unload", dependencies=ADMIN)
async def unload_lora(body: NameRequest, state: State) -> dict[str, Any]:
    await _forget(state, body.name)
    return {"name": body.name, "status": "unloaded"}


@router.delete("/v1/loras/{name}", dependencies=ADMIN)
async def delete_lora(name: str, state: State) -> dict[str, Any]:
    await _forget(state, name)
    return {"id": name, "object": "lora.deleted", "deleted": True}


@router.get("/v1/loras/list")
async def list_loaded(state: State) -> dict[str, Any]:
    loras = await state.loras.state()
    data = [{"name": name, "path": path, "active_on": active_on(loras, name)}
            for name, path in sorted(loras.loaded.items())]
    return {"object": "list", "data": data}
