"""What a quantized pipeline is: the record `dgate calibrate` writes and `dgate export --quantized` serves.

Torch-free (the denoiser model, `dgate_lora` and the frontend read it). A quantized denoiser's
weights are INT8/FP8 tensors with per-channel scales, so LoRA cannot be refit into them: a request
with adapters is refused unless they are exactly the adapters fused into the weights before
calibration (`dgate calibrate --fuse-lora`), which are then already there and cost nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgate.core.lora.request import AdapterRef, LoraError, resolve_adapter

QUANTIZED_PRECISIONS = ("int8", "fp8")
# Written beside the quantized ONNX by `dgate calibrate`.
MANIFEST_FILE = "quantization.json"


def adapter_digest(path: Path) -> str:
    """sha256 of an adapter file, or of a diffusers adapter folder's files (names and bytes)."""
    stat = path.stat()
    return _digest(path, stat.st_mtime_ns, stat.st_size)  # a rewritten file is a new key


@functools.lru_cache(maxsize=64)
def _digest(path: Path, _mtime_ns: int, _size: int) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FusedAdapter:
    """An adapter merged into the weights before calibration."""

    name: str  # as given to --fuse-lora (file or folder name)
    sha256: str
    scale: float


@dataclass(frozen=True)
class Quantization:
    """How a pipeline's denoiser was quantized (the `quantization` of its pipeline.json)."""

    precision: str  # "int8" | "fp8"
    component: str  # the quantized component: "unet" | "transformer"
    algorithm: str  # modelopt's calibration algorithm: "smoothquant" | "max"
    alpha: float | None  # SmoothQuant's migration strength
    excluded: tuple[str, ...]  # module-name patterns left in full precision
    calibration_prompts: int
    calibration_steps: int
    quantized_layers: int
    tool: str  # e.g. "nvidia-modelopt 0.47.0"
    source_config_sha256: str  # of the quantized component's config: export checks the base model matches
    fused_adapters: tuple[FusedAdapter, ...] = field(default_factory=tuple)
    # Text encoders the fused adapters changed: exported by `dgate calibrate` beside the denoiser.
    fused_components: tuple[str, ...] = field(default_factory=tuple)

    @property
    def components(self) -> tuple[str, ...]:
        """The components served from the calibration folder instead of the base model."""
        return (self.component, *self.fused_components)

    @property
    def needs_tensorrt(self) -> bool:
        """FP8 Q/DQ from modelopt are TensorRT operators; ONNX Runtime on the CPU cannot run them."""
        return self.precision == "fp8"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantization:
        data = dict(data)
        data["excluded"] = tuple(data.get("excluded", ()))
        data["fused_components"] = tuple(data.get("fused_components", ()))
        data["fused_adapters"] = tuple(FusedAdapter(**a) for a in data.get("fused_adapters", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: Path) -> Quantization:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_adapters(self, pipeline: str, refs: tuple[AdapterRef, ...], directory: Path) -> None:
        """Accept `refs` only if they are the fused adapters at their fused scales; LoraError otherwise.

        Accepted adapters are already in the weights: the caller must not apply them again.
        """
        fused = {(a.sha256, a.scale) for a in self.fused_adapters}
        for ref in refs:
            if (adapter_digest(resolve_adapter(directory, ref.path)), ref.scale) not in fused:
                baked = ", ".join(f"{a.name} at scale {a.scale:g}" for a in self.fused_adapters) or "none"
                raise LoraError(
                    f"{pipeline} is quantized ({self.precision}): LoRA adapters cannot be refit into quantized "
                    f"weights, and {ref.path!r} at scale {ref.scale:g} is not one fused before calibration "
                    f"(fused: {baked}). Serve the full-precision pipeline for adapters, or fuse this one with "
                    "`dgate calibrate --fuse-lora` and export the result")
