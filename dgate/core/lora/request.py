"""Which adapters a request runs with, and where adapter files may come from.

Torch-free: the frontend, the Triton models and the tests share it. A request's adapters travel to
Triton as one string tensor, `lora`: canonical JSON of (path, scale, target) entries with paths
relative to the adapters directory, so a Triton client can never name a file outside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dgate.core.errors import InvalidRequestError

LORA_DIR_ENV = "DGATE_LORA_DIR"
DEFAULT_LORA_DIR = "build/loras"
ADAPTER_SUFFIX = ".safetensors"
ALL_COMPONENTS = "all"
# Names a `target` may use for the denoiser, whatever the pipeline calls it.
DENOISER_TARGETS = ("unet", "transformer", "denoiser")


class LoraError(InvalidRequestError):
    """A bad adapter file or reference; the served weights stay as they were."""

    def __init__(self, message: str, param: str | None = "lora") -> None:
        super().__init__(message, param)


@dataclass(frozen=True)
class AdapterRef:
    """One adapter of a request: its file (relative to the adapters directory), strength and target."""

    path: str
    scale: float = 1.0
    target: str = ALL_COMPONENTS

    def applies_to(self, component: str, denoiser_component: str) -> bool:
        if self.target == ALL_COMPONENTS or self.target == component:
            return True
        return self.target in DENOISER_TARGETS and component == denoiser_component


def encode_adapters(refs: Iterable[AdapterRef]) -> str:
    """The `lora` tensor's text: "" for none; adapters at scale 0 are left out (they change nothing)."""
    entries = [{"path": r.path, "scale": float(r.scale), "target": r.target} for r in refs if r.scale != 0]
    return json.dumps(entries, sort_keys=True, separators=(",", ":")) if entries else ""


def decode_adapters(text: str) -> tuple[AdapterRef, ...]:
    if not text:
        return ()
    try:
        entries = json.loads(text)
        refs = tuple(AdapterRef(str(e["path"]), float(e.get("scale", 1.0)), str(e.get("target", ALL_COMPONENTS)))
                     for e in entries)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise LoraError(f"lora must be a JSON list of {{path, scale, target}} objects: {error}") from error
    for ref in refs:
        relative_adapter_path(ref.path)
    return refs


def adapters_dir() -> Path:
    """The one directory adapters load from (`DGATE_LORA_DIR`, default build/loras)."""
    return Path(os.environ.get(LORA_DIR_ENV, DEFAULT_LORA_DIR))


def relative_adapter_path(path: str) -> str:
    """`path` normalised, if it stays inside the adapters directory; LoraError otherwise."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise LoraError(f"adapter path {path!r} must be relative to the adapters directory, without '..'",
                        "lora_path")
    return pure.as_posix()


def resolve_adapter(directory: Path, path: str) -> Path:
    """The adapter file or diffusers folder `path` names inside `directory` (symlinks may not escape)."""
    relative = relative_adapter_path(path)
    root = directory.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise LoraError(f"adapter path {path!r} leaves the adapters directory", "lora_path")
    if not target.exists():
        raise LoraError(f"no adapter {path!r} in the adapters directory", "lora_path")
    return target


def adapter_path_for_name(directory: Path, name: str) -> str:
    """A request's adapter `name` -> `<name>.safetensors` or the folder `<name>/`, relative paths."""
    relative = relative_adapter_path(name)
    for candidate in (relative + ADAPTER_SUFFIX, relative):
        try:
            resolve_adapter(directory, candidate)
        except LoraError:
            continue
        return candidate
    raise LoraError(f"unknown adapter {name!r}: no {name}{ADAPTER_SUFFIX} or {name}/ in the adapters directory "
                    f"and no adapter set under that name")
