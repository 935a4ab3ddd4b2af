"""Make `import torchvision` work beside the CPU build of torch.

The metric libraries of `dgate eval` (open_clip_torch, lpips, torch-fidelity) depend on torchvision,
and the only torchvision that pip can pair with `torch==2.13.0+cpu` here is the CUDA-linked PyPI
build. Its C extension cannot load against the CPU torch; torchvision then fails at import on
`register_fake("torchvision::nms")` ("operator torchvision::nms does not exist"), and because
transformers imports torchvision whenever it is installed, `import transformers` / `diffusers`
fail with it.

The fix, chosen over the matched CUDA pair torch 2.14.1 + torchvision 0.29.1 (~5.5 GB more per
venv, a different torch for every Triton stub): just before torchvision is first imported, try
its C extension ourselves; if it does not load, define the schemas of the two operators whose fake
kernels torchvision registers unconditionally (`nms`, `qnms`). Nothing dgate uses calls them; with
a working extension (a matched torch/torchvision) nothing is defined.

`install()` puts a finder on `sys.meta_path` that does this on the first `import torchvision`, so
it costs nothing in processes that never import torchvision (the frontend does not import torch).
`dgate/__init__.py` installs it, so every dgate process (CLI, Triton stubs, tests) is covered; the
`dgate-torchvision.pth` file that `make install` writes covers plain `python` in the venv.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # the torch.library.Library that holds the schemas (must stay alive)


def _extension_loads(package_dir: Path) -> bool:
    import torch

    for extension in sorted(package_dir.glob("_C*.so")):
        try:
            torch.ops.load_library(str(extension))
            return True
        except (ImportError, OSError):
            return False
    return False


def define_missing_schemas(package_dir: Path) -> bool:
    """Define torchvision's `nms`/`qnms` schemas unless its C extension loads; True if defined."""
    global _library
    if _library is not None or _extension_loads(package_dir):
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept alive in a module global)
    for schema in _SCHEMAS:
        _library.define(schema)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # once, and not while the real finders look for torchvision
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.origin is not None:
            define_missing_schemas(Path(spec.origin).parent)
        return spec


def install() -> None:
    """Arrange for `define_missing_schemas` to run just before torchvision is first imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())
