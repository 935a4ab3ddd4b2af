"""Session fixtures: the tiny pipelines, their exported model repository and a real tritonserver."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

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

# Test tiers: `make test-fast` runs -m "not e2e and not slow", `make test` everything.
# e2e: the test starts tritonserver or uses the session's exported repository. Derived from the fixtures it
# uses (item.fixturenames is the closure, so every fixture built on these counts too), so it cannot drift;
# E2E_TESTS names the tests that start a tritonserver of their own.
E2E_FIXTURES = frozenset({"triton", "model_repository", "quantized_models", "fused_triton", "fault_repository",
                          "cpu_check"})  # cpu_check: gpu-check serves tiny SD through tritonserver
E2E_TESTS = frozenset({
    "test_triton_server.py::test_serves_http_and_grpc_then_stops",
    "test_triton_server.py::test_broken_model_fails_start_with_log",
    "test_triton_server.py::test_run_foreground_stops_on_sigint",
})
# slow: the rest of what `pytest --durations` on 2 CPU cores found at 7-42 s a call: every training and
# calibration run, the evaluation runs, the FP16 export check, a subprocess importing torchvision.
# A name here that matches no test is a usage error, so that a rename cannot drop it silently.
SLOW_TESTS = frozenset({
    "test_calibration.py::test_dit_calibration_quantizes_the_transformer_blocks",
    "test_calibration.py::test_fp8_is_for_tensorrt_and_onnxruntime_export_refuses_it",
    "test_eval.py::test_clip_random_weights_score_in_range_and_deterministic",
    "test_eval.py::test_fid_random_weights_zero_against_itself_positive_against_other",
    "test_eval.py::test_run_eval_against_stub_server_random_weights",
    "test_export.py::test_fp16_export_stays_close_to_pytorch",
    "test_finetune.py::test_dreambooth_prior_preservation_generates_class_images",
    "test_finetune.py::test_lora_cli_adapter_loads_in_diffusers_and_matches_training",
    "test_finetune.py::test_resume_ends_where_an_uninterrupted_run_ends",
    "test_finetune.py::test_sdxl_with_text_encoders_round_trips",
    "test_packaging.py::test_torchvision_imports_beside_the_cpu_torch",
})


def _test_name(item: pytest.Item) -> str:
    """`file.py::function`, without parameters: the form of E2E_TESTS and SLOW_TESTS."""
    return f"{item.path.name}::{getattr(item, 'originalname', item.name)}"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modules: dict[str, object] = {}
    for item in items:
        name = _test_name(item)
        if E2E_FIXTURES.intersection(item.fixturenames) or name in E2E_TESTS:
            item.add_marker(pytest.mark.e2e)
        if name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        module = getattr(item, "module", None)
        if module is not None:
            modules[item.path.name] = module
    stale = []
    for name in sorted(E2E_TESTS | SLOW_TESTS):
        file, function = name.split("::")
        # Checked against the collected modules, not the items, so that running a few tests checks too.
        if not (Path(__file__).parent / file).is_file() or (
                file in modules and not callable(getattr(modules[file], function, None))):
            stale.append(name)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py names tests that do not exist: {', '.join(stale)}")


@contextmanager
def _refuse_triton_outside_e2e(item: pytest.Item) -> Iterator[None]:
    """A test outside the e2e tier (or a fixture it sets up) that starts tritonserver fails, rather than
    silently slowing `make test-fast`."""
    if item.get_closest_marker("e2e") is not None:
        yield
        return
    from dgate.triton_server import TritonServer

    def refuse(self: object) -> None:
        raise RuntimeError(f"{_test_name(item)} starts tritonserver: name it (or its fixture) in tests/conftest.py's "
                           "E2E_TESTS (E2E_FIXTURES)")

    with patch.object(TritonServer, "start", refuse):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _refuse_triton_outside_e2e(item):  # module and session fixtures are set up here too
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _refuse_triton_outside_e2e(item):
        return (yield)


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
    # The torch engine (`--engine torch`): the pipeline's own modules in the Python backend, no ONNX.
    for name, source in TORCH_ENGINE_PIPELINES.items():
        export_pipeline(str(tiny_models[source]), repository, name=name,
                        options=ServingOptions(engine="torch", onnx_threads=2))
    for path in inpaint_models.values():
        export_pipeline(str(path), repository, options=ServingOptions(onnx_threads=2))
    for name, directory in quantized_models.items():
        export_pipeline(str(tiny_models["tiny-sd"]), repository, name=name, quantized=directory,
                        options=replace(options, denoiser_instances=1))
    return repository


ASYNC_PIPELINES = {"tiny-sd-async": "tiny-sd", "tiny-flux-async": "tiny-flux"}
TORCH_ENGINE_PIPELINES = {"tiny-sd-torch": "tiny-sd"}

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
