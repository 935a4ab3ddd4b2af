"""`dgate export`'s options mean what they say: a combination Triton cannot serve as asked is refused with
one line (exit code 2) before any model is read, and every accepted one reaches export as given. Every
parameter written into a config.pbtxt is read by the model that gets it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from diffusers import DiffusionPipeline

import dgate.export.pipeline_export as pipeline_export
from dgate.cli import main
from dgate.core.capabilities import Capabilities
from dgate.core.errors import ExportError
from dgate.core.families import spec_from_pipeline
from dgate.core.limits import GenerationLimits
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.served_pipeline import STREAMS_PARAMETER
from dgate.core.tensors import PIPELINE_MARKER_PARAMETER
from dgate.export.triton_config import (
    TORCH_QUANTIZED,
    ServingOptions,
    cancel_config,
    component_config,
    denoiser_config,
    ensemble_config,
    lora_config,
    tokenize_config,
    unservable,
    video_denoiser_config,
)
from dgate.tiny import build_tiny_pipeline

TRT_CPU = "TensorRT engines run on GPU instances only (Triton refuses them on the CPU): add --device gpu"
GPU_ORT_LORA = ("LoRA on GPU instances needs --engine torch or tensorrt: ONNX Runtime's CUDA sessions take no weights "
                "updated in place (or pass --no-lora)")
TORCH_NATIVE = "the torch engine runs in the Python backend: leave --triton-backend python"
THREADS_NATIVE = ("--onnx-threads sets the ONNX Runtime threads of Python-backend components; native models do "
                  "not read it: leave it at 0 with --triton-backend native")

REFUSED = {
    "tensorrt-in-python-on-cpu": (["--engine", "tensorrt"], TRT_CPU),
    "tensorrt-in-python-old-flag": (["--backend", "tensorrt"], TRT_CPU),
    "tensorrt-on-cpu": (["--triton-backend", "native", "--engine", "tensorrt"], TRT_CPU),
    "tensorrt-on-cpu-explicit": (["--triton-backend", "native", "--engine", "tensorrt", "--device", "cpu"], TRT_CPU),
    "gpu-onnxruntime-with-lora": (["--device", "gpu"], GPU_ORT_LORA),
    "torch-native": (["--triton-backend", "native", "--engine", "torch"], TORCH_NATIVE),
    "torch-quantized": (["--engine", "torch", "--quantized", "calibrated"], TORCH_QUANTIZED),
    "onnx-threads-native": (["--triton-backend", "native", "--onnx-threads", "2"], THREADS_NATIVE),
    "no-denoiser": (["--denoiser-instances", "0"], "--denoiser-instances must be at least 1, got 0"),
    "no-video-denoiser": (["--video-denoiser-instances", "0"], "--video-denoiser-instances must be at least 1, got 0"),
    "negative-components": (["--component-instances", "-1"], "--component-instances must be at least 1, got -1"),
    "negative-queue-delay": (["--max-queue-delay-us", "-5"], "--max-queue-delay-us must be 0 or more, got -5"),
    "negative-threads": (["--onnx-threads", "-1"], "--onnx-threads must be 0 or more, got -1"),
    "names-per-model": (["--name", "a", "--name", "b"], "--name must be given once per --model"),
    "quantized-per-model": (["--quantized", "-", "--quantized", "-"],
                            "--quantized must be given once per --model ('-' for a model served unquantized)"),
}

ACCEPTED = {
    "defaults": ([], ServingOptions()),
    "blocking": (["--denoiser", "blocking", "--denoiser-instances", "4", "--onnx-threads", "2"],
                 ServingOptions(denoiser="blocking", denoiser_instances=4, onnx_threads=2)),
    "no-lora": (["--no-lora"], ServingOptions(lora=False)),
    "queue-delay-zero": (["--max-queue-delay-us", "0"], ServingOptions(max_queue_delay_us=0)),
    "native-cpu": (["--triton-backend", "native"], ServingOptions(triton_backend="native")),
    "native-gpu": (["--triton-backend", "native", "--device", "gpu"],
                   ServingOptions(triton_backend="native", device="gpu")),
    "native-no-lora": (["--triton-backend", "native", "--no-lora"],
                       ServingOptions(triton_backend="native", lora=False)),
    "tensorrt": (["--triton-backend", "native", "--engine", "tensorrt", "--device", "gpu"],
                 ServingOptions(triton_backend="native", engine="tensorrt", device="gpu")),
    "tensorrt-old-flag": (["--triton-backend", "native", "--backend", "tensorrt", "--device", "gpu"],
                          ServingOptions(triton_backend="native", engine="tensorrt", device="gpu")),
    "tensorrt-python-gpu": (["--engine", "tensorrt", "--device", "gpu"],
                            ServingOptions(engine="tensorrt", device="gpu")),
    "torch": (["--engine", "torch"], ServingOptions(engine="torch")),
    "torch-gpu": (["--engine", "torch", "--device", "gpu"], ServingOptions(engine="torch", device="gpu")),
    "onnxruntime-gpu-no-lora": (["--device", "gpu", "--no-lora"], ServingOptions(device="gpu", lora=False)),
    "instances": (["--component-instances", "2", "--video-denoiser-instances", "3"],
                  ServingOptions(component_instances=2, video_denoiser_instances=3)),
}


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline_export, "load_pipeline", refuse)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_before_reading_the_model(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          no_model_loads: None) -> None:
    flags, message = REFUSED[case]
    missing, out = tmp_path / "no-such-model", tmp_path / "repository"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(missing), "--out", str(out), *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"dgate export: error: {message}\n"  # one line, no usage
    assert not out.exists()


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted_options_reach_export_as_given(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    flags, expected = ACCEPTED[case]
    calls: list[dict[str, Any]] = []

    def record(model: str, repository: Path, **kwargs: Any) -> SimpleNamespace:
        calls.append({"model": model, "repository": repository, **kwargs})
        return SimpleNamespace(spec=None, checks=())

    monkeypatch.setattr(pipeline_export, "export_pipeline", record)
    out = tmp_path / "repository"
    assert main(["export", "--model", "m", "--out", str(out), *flags]) == 0
    assert [(call["model"], call["repository"], call["options"]) for call in calls] == [("m", out, expected)]
    assert unservable(expected) is None
    assert capsys.readouterr().out == f"model repository: {out}\n"


def test_quantized_and_names_are_given_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def record(model: str, repository: Path, **kwargs: Any) -> SimpleNamespace:
        calls.append({"model": model, **kwargs})
        return SimpleNamespace(spec=None, checks=())

    monkeypatch.setattr(pipeline_export, "export_pipeline", record)
    assert main(["export", "--model", "a", "--model", "b", "--name", "x", "--name", "y", "--quantized", "-",
                 "--quantized", "q", "--out", str(tmp_path)]) == 0
    assert [(c["model"], c["name"], c["quantized"]) for c in calls] == [("a", "x", None), ("b", "y", Path("q"))]


def test_export_pipeline_refuses_the_same_before_loading(tmp_path: Path, no_model_loads: None) -> None:
    """The API caller (tests, dgate bench-designs) gets the CLI's reasons as an ExportError."""
    missing = str(tmp_path / "no-such-model")
    for options, message in ((ServingOptions(engine="tensorrt"), TRT_CPU),
                             (ServingOptions(triton_backend="native", engine="tensorrt"), TRT_CPU),
                             (ServingOptions(device="gpu"), GPU_ORT_LORA)):
        with pytest.raises(ExportError) as error:
            pipeline_export.export_pipeline(missing, tmp_path / "repository", options=options)
        assert str(error.value) == message
    with pytest.raises(ExportError) as error:
        pipeline_export.export_pipeline(missing, tmp_path / "repository", options=ServingOptions(engine="torch"),
                                        quantized=tmp_path / "calibrated")
    assert str(error.value) == TORCH_QUANTIZED
    with pytest.raises(ExportError, match="precision must be fp32 or fp16"):
        pipeline_export.export_pipeline(missing, tmp_path / "repository", precision="int4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [("triton_backend", "onnx"), ("engine", "openvino"), ("device", "tpu"),
                                          ("denoiser", "threaded")])
def test_serving_options_refuse_an_unknown_value(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be one of .*, got '{value}'$"):
        ServingOptions(**{field: value})


# --- every written parameter is read --------------------------------------------------------------------------
MODEL_CODE = Path(__file__).resolve().parents[1] / "model_repository"


def _parameters_read() -> set[str]:
    """Keys the Python models read with `ModelArgs.parameter(...)`."""
    code = "\n".join(path.read_text() for path in MODEL_CODE.glob("*.py"))
    return set(re.findall(r"\.parameter\(\s*\"(\w+)\"", code))


# Parameters python_backend itself reads: GPU inputs stay on the GPU instead of being copied to the host.
TRITON_READS = {"FORCE_CPU_ONLY_INPUT_TENSORS"}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[PipelineSpec]:
    """One image and one video pipeline (each built in a few seconds)."""
    out = tmp_path_factory.mktemp("models")
    return [spec_from_pipeline(DiffusionPipeline.from_pretrained(str(build_tiny_pipeline(name, out))), name)
            for name in ("tiny-sd", "tiny-animatediff")]


@pytest.mark.parametrize("options", [ServingOptions(), ServingOptions(denoiser="blocking", lora=False),
                                     ServingOptions(triton_backend="native", device="gpu"),
                                     ServingOptions(engine="torch", device="gpu")],
                         ids=["async", "blocking-no-lora", "native-gpu", "torch-gpu"])
def test_every_written_parameter_is_read(specs: list[PipelineSpec], options: ServingOptions) -> None:
    read = _parameters_read()
    assert {"engine", "component", "onnx_threads", "lora_component", "lora"} <= read  # the regex still finds them
    read |= TRITON_READS
    for spec in specs:
        configs = [component_config(spec, component, options) for component in spec.exported_components]
        configs += [tokenize_config(spec, options), cancel_config(options), lora_config(options),
                    (video_denoiser_config if spec.capabilities.is_video else denoiser_config)(spec, options)]
        for config in configs:
            assert set(config.parameters) <= read, config.name
        # The ensemble's parameters are the frontend's: the pipeline marker and a ServedPipeline's.
        served = {field.name for field in (*fields(GenerationLimits), *fields(Capabilities))} | {STREAMS_PARAMETER}
        assert set(ensemble_config(spec, options).parameters) <= {PIPELINE_MARKER_PARAMETER} | served
    assert "denoiser_model" not in denoiser_config(specs[0], options).parameters


def test_python_components_on_gpu_are_gpu_instances_that_keep_gpu_inputs(specs: list[PipelineSpec]) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    gpu = component_config(specs[0], "unet", ServingOptions(engine="torch", device="gpu"))
    assert [group.kind for group in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert gpu.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert gpu.parameters["engine"].string_value == "torch" and gpu.parameters["component"].string_value == "unet"
    cpu = component_config(specs[0], "unet", ServingOptions(engine="torch"))
    assert [group.kind for group in cpu.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in cpu.parameters


def test_a_path_without_a_pipeline_is_one_line_not_a_traceback(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing, out = tmp_path / "no-such-model", tmp_path / "repository"
    assert main(["export", "--model", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dgate export: {missing}: no diffusers pipeline could be loaded from '{missing}'")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()
