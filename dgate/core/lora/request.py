"""Which adapters a request runs with, and where adapter files may come from.

Torch-free: the frontend, the Triton models and the tests share it. A request's adapters travel to
Triton as one string tensor, `lora`: canonical JSON of (path, scale, target) entries. A path is
relative to the adapters directory (`DGATE_LORA_DIR`), or absolute under one of the adapter roots:
that directory and those of `DGATE_LORA_DIRS` (`:`-separated like PATH; SGLang and vLLM-Omni take
absolute adapter paths). Wherever a path is resolved it is checked against the same roots, so a
Triton client can never name a file outside them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dgate.core.errors import InvalidRequestError

LORA_DIR_ENV = "DGATE_LORA_DIR"
LORA_DIRS_ENV = "DGATE_LORA_DIRS"
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
    """One adapter of a request: its file (relative to the adapters directory, or absolute under an
    adapter root), strength and target."""

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
        adapter_path(ref.path)
    return refs


def adapters_dir() -> Path:
    """The adapters directory (`DGATE_LORA_DIR`, default build/loras): relative paths and names resolve there."""
    return Path(os.environ.get(LORA_DIR_ENV, DEFAULT_LORA_DIR))


def parse_adapter_roots(text: str) -> tuple[Path, ...]:
    """`DGATE_LORA_DIRS`' directories: `:`-separated like PATH, empty entries skipped."""
    return tuple(Path(entry) for entry in text.split(":") if entry)


def extra_adapter_roots() -> tuple[Path, ...]:
    """The adapter roots of `DGATE_LORA_DIRS` (beside the adapters directory, always a root)."""
    return parse_adapter_roots(os.environ.get(LORA_DIRS_ENV, ""))


_BAD_PATH = ("must be relative to the adapters directory, or absolute under an adapter root "
             f"({LORA_DIR_ENV} or {LORA_DIRS_ENV}), without '..' and not a URL")


def _checked(path: str) -> PurePosixPath:
    pure = PurePosixPath(path.replace("\\", "/"))
    # `scheme:` (a URL) or `C:` as first part: never a local path here.
    if not path or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise LoraError(f"adapter path {path!r} {_BAD_PATH}", "lora_path")
    return pure


def adapter_path(path: str) -> str:
    """`path` normalised, relative or absolute, without '..' or a URL scheme; LoraError otherwise.
    Whether an absolute path lies under an adapter root is `resolve_adapter`'s to check."""
    return _checked(path).as_posix()


def relative_adapter_path(path: str) -> str:
    """`path` normalised, if it stays inside the adapters directory; LoraError otherwise (names)."""
    pure = _checked(path)
    if pure.is_absolute():
        raise LoraError(f"adapter path {path!r} must be relative to the adapters directory, without '..'",
                        "lora_path")
    return pure.as_posix()


def resolve_adapter(directory: Path, path: str, extra_roots: Sequence[Path] | None = None) -> Path:
    """The adapter file or diffusers folder `path` names: relative to `directory`, or absolute under
    `directory` or one of `extra_roots` (default: `DGATE_LORA_DIRS`'). Symlinks may not leave the roots."""
    pure = PurePosixPath(adapter_path(path))
    extra = extra_adapter_roots() if extra_roots is None else tuple(extra_roots)
    given = [root.absolute() for root in (directory, *extra)]
    roots = [root.resolve() for root in given]
    # Under a root by name: as configured, or through a symlinked name of it (the launcher of Triton
    # passes roots resolved); a symlink outside the roots to a file inside does not count.
    if pure.is_absolute() and not (any(pure.is_relative_to(root) for root in given)
                                   or any(Path(pure).parent.resolve().is_relative_to(root) for root in roots)):
        raise LoraError(f"adapter path {path!r} lies outside the adapters directory and the adapter roots "
                        f"({LORA_DIRS_ENV})", "lora_path")
    target = (roots[0] / pure).resolve()  # an absolute `pure` replaces the directory
    if not any(target.is_relative_to(root) for root in roots):
        where = "the adapter roots" if pure.is_absolute() else "the adapters directory"
        raise LoraError(f"adapter path {path!r} leaves {where}", "lora_path")
    if not target.exists():
        where = "" if pure.is_absolute() else " in the adapters directory"
        raise LoraError(f"no adapter {path!r}{where}", "lora_path")
    return target


def adapter_path_for_name(directory: Path, name: str, extra_roots: Sequence[Path] | None = None) -> str:
    """A request's adapter `name` -> `<name>.safetensors` or the folder `<name>/`, relative paths."""
    relative = relative_adapter_path(name)
    for candidate in (relative + ADAPTER_SUFFIX, relative):
        try:
            resolve_adapter(directory, candidate, extra_roots)
        except LoraError:
            continue
        return candidate
    raise LoraError(f"unknown adapter {name!r}: no {name}{ADAPTER_SUFFIX} or {name}/ in the adapters directory "
                    f"and no adapter set under that name")
