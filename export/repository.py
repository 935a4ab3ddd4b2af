"""Write one pipeline's Triton models into a model repository, atomically per model."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from dgate.core.pipeline_spec import PIPELINE_FILE
from dgate.export.triton_config import render

__all__ = ["PIPELINE_FILE", "SCHEDULER_FILE", "model_shim", "write_model"]

logger = logging.getLogger(__name__)

SCHEDULER_FILE = "scheduler_config.json"

# Triton Python models are one-line shims onto the installed package, so the code that runs in
# Triton is the same code the CLIs and tests import (no copies in the repository).
SHIM = '''"""Triton Python model: {doc}."""

from dgate.model_repository.{module} import TritonPythonModel  # noqa: F401
'''


def model_shim(module: str, doc: str) -> str:
    return SHIM.format(module=module, doc=doc)


def write_model(
    repository: Path,
    config: mc.ModelConfig,
    files: Mapping[str, Path | str],
) -> Path:
    """Create `repository/<name>/` with config.pbtxt and version 1 holding `files`.

    `files` maps a path under `1/` to text (written) or to a file/directory in the exporter's
    scratch space (moved, so multi-GB weights are not copied). The model is assembled in a
    temporary directory and renamed into place, so a failed export never leaves a half-written
    model for Triton to load.
    """
    repository.mkdir(parents=True, exist_ok=True)
    final = repository / config.name
    with tempfile.TemporaryDirectory(dir=repository, prefix=f".{config.name}.") as staging_root:
        staging = Path(staging_root) / config.name
        version = staging / "1"
        version.mkdir(parents=True)
        (staging / "config.pbtxt").write_text(render(config))
        for relative, source in files.items():
            target = version / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.move(str(source), target)
            else:
                target.write_text(source)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    logger.info("wrote %s", final)
    return final


def json_text(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
