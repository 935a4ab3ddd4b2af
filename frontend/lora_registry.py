"""The frontend's LoRA state: adapters known by nickname and the active set of each pipeline.

Adapters themselves live in Triton's component models (refit per request); what this registry holds
is which adapters a request without its own `lora` field runs with (seed 004's `set_lora`), and
the nickname -> file map. That state lives in the job database (`jobs.lora_store`), so replicas
sharing it agree and a restart keeps it. Each request compares the cached copy's version with the
database's (one indexed single-row read) and reloads the state only when it changed; changes run
under the database's lock (`update`), so concurrent ones from any replica never interleave.

A request's adapters come as D-Gate's names (`lora` + `lora_scale`) or vLLM-Omni's objects
(`{name, path, scale}`); paths, here and in `set_lora` (SGLang's absolute `lora_path` included),
are checked against the adapter roots the Triton models check them against again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from dgate.core.errors import InvalidRequestError
from dgate.core.lora.request import (
    ALL_COMPONENTS,
    AdapterRef,
    LoraError,
    adapter_path,
    adapter_path_for_name,
    encode_adapters,
    parse_adapter_roots,
    resolve_adapter,
)
from dgate.frontend.engine import ServiceUnavailable
from dgate.frontend.jobs.lora_store import DEFAULT_PREFIX, ActiveAdapter, Change, LoraState, LoraStore, open_lora_store
from dgate.frontend.settings import FrontendSettings


class AdapterObject(Protocol):
    """vLLM-Omni's per-request adapter (`frontend.schemas.LoraObject`)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def scale(self) -> float | None: ...


def broadcast(name: str, values: object, length: int) -> list:
    """A scalar repeated `length` times, or a list of exactly `length` values (seed 004's rule)."""
    if not isinstance(values, list):
        return [values] * length
    if len(values) != length:
        raise InvalidRequestError(f"{name} has {len(values)} values for {length} adapters", name)
    return values


class LoraRegistry:
    def __init__(self, directory: Path, extra_roots: Sequence[Path] = (), db_url: str | None = None,
                 prefix: str = DEFAULT_PREFIX) -> None:
        self.directory = directory
        self.extra_roots = tuple(extra_roots)  # absolute paths may also lie under these
        self.db_url, self.prefix = db_url, prefix  # the job database (settings.jobs_db); tests set the prefix
        self._store: LoraStore | None = None
        self._cached = LoraState(version=-1)  # never current: the first read loads

    @classmethod
    def from_settings(cls, settings: FrontendSettings) -> LoraRegistry:
        return cls(Path(settings.lora_dir), parse_adapter_roots(settings.lora_dirs or ""), settings.jobs_db)

    async def open(self) -> None:
        if self._store is None and self.db_url is not None:
            self._store = await open_lora_store(self.db_url, prefix=self.prefix)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    def _open_store(self) -> LoraStore:
        if self._store is None:
            raise ServiceUnavailable("the LoRA registry is not open (the app is starting or stopping)")
        return self._store

    async def state(self) -> LoraState:
        """The current state: the cached copy while its version is the database's, else read again."""
        store = self._open_store()
        if await store.version() != self._cached.version:
            self._cached = await store.read()
        return self._cached

    async def update(self, change: Change) -> LoraState:
        """Change the state under the database's lock (see `LoraStore.update`); returns the state stored."""
        self._cached = await self._open_store().update(change)
        return self._cached

    def checked_path(self, lora_path: str) -> str:
        """`lora_path` normalised, if it names an adapter under the roots (LoraError otherwise)."""
        path = adapter_path(lora_path)
        resolve_adapter(self.directory, path, self.extra_roots)  # exists, under a root
        return path

    def path_for(self, state: LoraState, nickname: str, lora_path: str | None = None) -> str:
        """The adapter file for a nickname: the given path, a known nickname, or `<nickname>.safetensors`."""
        if not nickname:
            raise InvalidRequestError("lora_nickname must not be empty", "lora_nickname")
        if lora_path:
            return self.checked_path(lora_path)
        if nickname in state.loaded:
            return state.loaded[nickname]
        return adapter_path_for_name(self.directory, nickname, self.extra_roots)

    async def request_lora(self, model: str, names: str | AdapterObject | Sequence[str | AdapterObject] | None,
                           scales: float | list[float] | None) -> str:
        """The `lora` input of one generation: its own adapters, else the pipeline's active set.

        An adapter is a name (D-Gate's) or a `{name, path, scale}` object (vLLM-Omni's): an object's
        own `scale` wins over `lora_scale`'s value for it.
        """
        state = await self.state()
        if names is None:
            if scales is not None and not isinstance(scales, list):  # lora_scale alone rescales the active set
                return encode_adapters(a.ref(scales) for a in state.active.get(model, ()))
            return encode_adapters(a.ref() for a in state.active.get(model, ()))
        listed = list(names) if isinstance(names, Sequence) and not isinstance(names, str) else [names]
        strengths = broadcast("lora_scale", 1.0 if scales is None else scales, len(listed))
        try:
            refs = [AdapterRef(self.path_for(state, entry), float(scale)) if isinstance(entry, str)
                    else AdapterRef(self.checked_path(entry.path),
                                    float(scale if entry.scale is None else entry.scale))
                    for entry, scale in zip(listed, strengths, strict=True)]
        except LoraError as error:
            raise InvalidRequestError(error.message, "lora") from error
        return encode_adapters(refs)


# --- changes: the state before -> the state after (run inside `LoraRegistry.update`) -----------------------


def check_unmerged(state: LoraState, model: str) -> None:
    if any(a.merged for a in state.active.get(model, ())):
        raise InvalidRequestError(f"{model} has merged adapters: call /v1/unmerge_lora_weights before "
                                  "switching adapters", "lora_nickname")


def activate(state: LoraState, model: str, adapters: Sequence[ActiveAdapter]) -> LoraState:
    check_unmerged(state, model)
    loaded = {**state.loaded, **{adapter.nickname: adapter.path for adapter in adapters}}
    return replace(state, loaded=loaded).with_active(model, tuple(adapters))


def set_merged(state: LoraState, model: str, merged: bool, target: str | None = None,
               strength: float | None = None) -> LoraState:
    adapters = state.active.get(model, ())
    chosen = [a for a in adapters if target in (None, ALL_COMPONENTS) or a.target in (target, ALL_COMPONENTS)]
    if not chosen:
        raise InvalidRequestError(f"{model} has no active adapters to {'merge' if merged else 'unmerge'}",
                                  "target")
    if not merged and not any(a.merged for a in chosen):
        raise InvalidRequestError(f"{model} has no merged adapters", "target")
    return state.with_active(model, tuple(
        replace(a, merged=merged, strength=a.strength if strength is None or not merged else strength)
        if a in chosen else a for a in adapters))


def forget(state: LoraState, nickname: str) -> LoraState | None:
    """Drop an adapter by nickname from the registry and from every active set (None: it is not known)."""
    loaded = {name: path for name, path in state.loaded.items() if name != nickname}
    active = {model: tuple(a for a in adapters if a.nickname != nickname) for model, adapters in state.active.items()}
    if len(loaded) == len(state.loaded) and active == state.active:
        return None
    return replace(state, loaded=loaded, active=active)


def active_on(state: LoraState, nickname: str) -> list[str]:
    return sorted(m for m, adapters in state.active.items() if any(a.nickname == nickname for a in adapters))
