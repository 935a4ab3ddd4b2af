"""The frontend's LoRA state: adapters known by nickname and the active set of each pipeline.

Adapters themselves live in Triton's component models (refit per request); what this registry holds
is which adapters a request without its own `lora` field runs with (seed 004's `set_lora`), and
the nickname -> file map. It is per frontend process: replicas behind a load balancer each keep
their own (requests that name their adapters are the same on every replica).

A request's adapters come as D-Gate's names (`lora` + `lora_scale`) or vLLM-Omni's objects
(`{name, path, scale}`); paths, here and in `set_lora` (SGLang's absolute `lora_path` included),
are checked against the adapter roots the Triton models check them against again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
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
from dgate.frontend.settings import FrontendSettings


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
    def __init__(self, directory: Path, extra_roots: Sequence[Path] = ()) -> None:
        self.directory = directory
        self.extra_roots = tuple(extra_roots)  # absolute paths may also lie under these
        self.loaded: dict[str, str] = {}  # nickname -> path (relative to the adapters directory, or absolute)
        self.active: dict[str, list[ActiveAdapter]] = {}  # pipeline -> its default adapters

    @classmethod
    def from_settings(cls, settings: FrontendSettings) -> LoraRegistry:
        return cls(Path(settings.lora_dir), parse_adapter_roots(settings.lora_dirs or ""))

    def checked_path(self, lora_path: str) -> str:
        """`lora_path` normalised, if it names an adapter under the roots (LoraError otherwise)."""
        path = adapter_path(lora_path)
        resolve_adapter(self.directory, path, self.extra_roots)  # exists, under a root
        return path

    def path_for(self, nickname: str, lora_path: str | None = None) -> str:
        """The adapter file for a nickname: the given path, a known nickname, or `<nickname>.safetensors`."""
        if not nickname:
            raise InvalidRequestError("lora_nickname must not be empty", "lora_nickname")
        if lora_path:
            return self.checked_path(lora_path)
        if nickname in self.loaded:
            return self.loaded[nickname]
        return adapter_path_for_name(self.directory, nickname, self.extra_roots)

    def request_lora(self, model: str, names: str | AdapterObject | Sequence[str | AdapterObject] | None,
                     scales: float | list[float] | None) -> str:
        """The `lora` input of one generation: its own adapters, else the pipeline's active set.

        An adapter is a name (D-Gate's) or a `{name, path, scale}` object (vLLM-Omni's): an object's
        own `scale` wins over `lora_scale`'s value for it.
        """
        if names is None:
            if scales is not None and not isinstance(scales, list):  # lora_scale alone rescales the active set
                return encode_adapters(a.ref(scales) for a in self.active.get(model, []))
            return encode_adapters(a.ref() for a in self.active.get(model, []))
        listed = list(names) if isinstance(names, Sequence) and not isinstance(names, str) else [names]
        strengths = broadcast("lora_scale", 1.0 if scales is None else scales, len(listed))
        try:
            refs = [AdapterRef(self.path_for(entry), float(scale)) if isinstance(entry, str)
                    else AdapterRef(self.checked_path(entry.path),
                                    float(scale if entry.scale is None else entry.scale))
                    for entry, scale in zip(listed, strengths, strict=True)]
        except LoraError as error:
            raise InvalidRequestError(error.message, "lora") from error
        return encode_adapters(refs)

    def activate(self, model: str, adapters: Sequence[ActiveAdapter]) -> None:
        if any(a.merged for a in self.active.get(model, [])):
            raise InvalidRequestError(f"{model} has merged adapters: call /v1/unmerge_lora_weights before "
                                      "switching adapters", "lora_nickname")
        for adapter in adapters:
            self.loaded[adapter.nickname] = adapter.path
        self.active[model] = list(adapters)

    def set_merged(self, model: str, merged: bool, target: str | None = None, strength: float | None = None
                   ) -> list[ActiveAdapter]:
        adapters = self.active.get(model, [])
        chosen = [a for a in adapters if target in (None, ALL_COMPONENTS) or a.target in (target, ALL_COMPONENTS)]
        if not chosen:
            raise InvalidRequestError(f"{model} has no active adapters to {'merge' if merged else 'unmerge'}",
                                      "target")
        if not merged and not any(a.merged for a in chosen):
            raise InvalidRequestError(f"{model} has no merged adapters", "target")
        updated = [replace(a, merged=merged, strength=a.strength if strength is None or not merged else strength)
                   if a in chosen else a for a in adapters]
        self.active[model] = updated
        return updated

    def forget(self, nickname: str) -> bool:
        """Drop an adapter by nickname from the registry and from every active set."""
        known = self.loaded.pop(nickname, None) is not None
        for model, adapters in self.active.items():
            kept = [a for a in adapters if a.nickname != nickname]
            known = known or len(kept) != len(adapters)
            self.active[model] = kept
        return known

    def active_on(self, nickname: str) -> list[str]:
        return sorted(m for m, adapters in self.active.items() if any(a.nickname == nickname for a in adapters))
