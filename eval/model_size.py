"""The size on disk of a served model's denoiser, read from the Triton model repository (optional:
the OpenAI API does not report it, so `dgate eval --model-repository` points at the folder)."""

from __future__ import annotations

from pathlib import Path

from dgate.core.pipeline_spec import PIPELINE_FILE, PipelineSpec

# What a component's version folder holds for its engine (ONNX and its external data, or a TensorRT plan).
WEIGHT_FILES = ("model.onnx*", "model.plan")


def denoiser_bytes(repository: Path, pipeline: str) -> int | None:
    """Bytes of `pipeline`'s UNet/transformer files; None when the repository does not hold it."""
    spec_file = repository / f"{pipeline}_denoiser" / "1" / PIPELINE_FILE
    if not spec_file.is_file():
        return None
    version = repository / f"{pipeline}_{PipelineSpec.load(spec_file).denoiser_component}" / "1"
    files = {path for pattern in WEIGHT_FILES for path in version.glob(pattern) if path.is_file()}
    return sum(path.stat().st_size for path in files) or None
