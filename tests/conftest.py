"""Session fixtures: the tiny pipelines, their exported model repository and a real tritonserver."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

# Tests never reach a hub: the tiny pipelines are built locally and loaded back from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One adapters directory for the session, set before tritonserver starts so its models read it too.
os.environ.setdefault("DGATE_LORA_DIR", tempfile.mkdtemp(prefix="dgate-loras-"))
# Video jobs and url images of every frontend a test starts with default settings: never the repo's
# build/ (a local `make serve` keeps its own jobs there).
_STATE = tempfile.mkdtemp(prefix="dgate-frontend-state-")
os.environ.setdefault("DGATE_JOBS_DB", f"sqlite://{_STATE}/jobs.db")
os.environ.setdefault("DGATE_ASSETS_DIR", f"{_STATE}/assets")

pytest_plugins = ["frontend_fixtures", "postgres_server"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dgate.tiny import build_tiny_pipelines

    paths = build_tiny_pipelines(tmp_path_factory.mktemp("models"))
    return {path.name: path for path in paths}


@pytest.fixture(scope="session")
def inpaint_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pipelines whose UNet is a dedicated (9-channel) inpainting one: masked edits only."""
    from dgate.tiny import INPAINT_TINY_PIPELINES, build_tiny_pipelines

    paths = build_tiny_pipelines(tmp_path_factory.mktemp("inpaint_models"), INPAINT_TINY_PIPELINES)
    return {path.name: path for path in paths}


# tiny-sdxl is exported with every weight in an external-data file, the layout every full-size
# SDXL/SD3/Flux component has (> 2 GB), so serving that layout is covered end to end.
EXTERNAL_DATA_PIPELINE = "tiny-sdxl"


@pytest.fixture(scope="session")
def model_repository(tiny_models: dict[str, Path], quantized_models: dict[str, Path], inpaint_models: dict[str, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny pipeline exported into one repository, as `dgate export` does."""
    from dgate.export.pipeline_export import export_pipeline
    from dgate.export.triton_config import ServingOptions

    repository = tmp_path_factory.mktemp("model_repository")
    # Two ORT threads per component: this CI machine has two cores. The blocking denoiser design
    # with four instances, so that steps of concurrent requests queue up together and the batching
    # test can see them batched, and so that plain HTTP/gRPC infer calls reach every family.
    options = ServingOptions(denoiser="blocking", denoiser_instances=4, onnx_threads=2)
    for name, path in tiny_models.items():
        threshold = {"external_data_threshold": 0} if name == EXTERNAL_DATA_PIPELINE else {}
        export_pipeline(str(path), repository, options=options, **threshold)
    # The async design (`dgate export`'s default: one decoupled denoiser, streaming) for a UNet and a
    # DiT family: streaming, edits and the playground are tested on these.
    for name, source in ASYNC_PIPELINES.items():
        export_pipeline(str(tiny_models[source]), repository, name=name, options=ServingOptions(onnx_threads=2))
    for path in inpaint_models.values():
        export_pipeline(str(path), repository, options=ServingOptions(onnx_threads=2))
    for name, directory in quantized_models.items():
        export_pipeline(str(tiny_models["tiny-sd"]), repository, name=name, quantized=directory,
                        options=replace(options, denoiser_instances=1))
    return repository


ASYNC_PIPELINES = {"tiny-sd-async": "tiny-sd", "tiny-flux-async": "tiny-flux"}

# Served beside tiny-sd: its INT8 calibration (one denoiser instance: 7 more stub processes).
QUANTIZED_PIPELINE = "tiny-sd-int8"
CALIBRATION_PROMPTS, CALIBRATION_STEPS = 8, 4


@pytest.fixture(scope="session")
def quantized_models(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`dgate calibrate --precision int8` of tiny-sd (the first shipped prompts, few steps)."""
    from dgate.calibration.calibrate import calibrate
    from dgate.calibration.recipe import CalibrationRecipe, read_prompts, shipped_prompts

    out = tmp_path_factory.mktemp("quant") / QUANTIZED_PIPELINE
    result = calibrate(str(tiny_models["tiny-sd"]), out, CalibrationRecipe("int8", steps=CALIBRATION_STEPS),
                       read_prompts(shipped_prompts(), CALIBRATION_PROMPTS))
    return {QUANTIZED_PIPELINE: result.out}


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver on free ports, shared by the session's end-to-end tests."""
    from dgate.triton_server import TritonServer, free_ports

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(model_repository, free_ports(), log_path=log)
    server.start()
    yield server
    server.stop()
