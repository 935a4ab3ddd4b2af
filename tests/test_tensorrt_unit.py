"""The TensorRT path's pieces that need no GPU: what a plan is tied to (engine.json) and the one-line
refusal of a plan built elsewhere, the refit weights saved beside a plan, the timing cache's place, and
which network a precision builds on TensorRT 10 and 11 (strongly typed, but for TensorRT 10's Q/DQ).
The build and the engine themselves run in `dgate gpu-check` where TensorRT and a GPU are present."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from dgate.core.engines.tensorrt_engine import PlanInfo
from dgate.export.tensorrt_build import (
    TIMING_CACHE_ENV,
    network_flags,
    save_refit_weights,
    timing_cache_path,
    weakly_typed_quantization,
)

INFO = PlanInfo("10.13.0.35", "9.0", "NVIDIA H100 80GB HBM3", "fp16", ("out_sample",), ("w_q", "w_k"))


def test_plan_info_round_trips_through_engine_json(tmp_path: Path) -> None:
    (tmp_path / "engine.json").write_text(INFO.to_json())
    assert PlanInfo.load(tmp_path / "engine.json") == INFO


def test_a_plan_from_another_tensorrt_or_gpu_is_refused_in_one_line() -> None:
    assert INFO.mismatch("10.13.0.35", "9.0") is None
    version = INFO.mismatch("11.4.0.106", "9.0")
    assert version is not None and "TensorRT 10.13.0.35" in version and "TensorRT 11.4.0.106" in version
    gpu = INFO.mismatch("10.13.0.35", "8.0")
    assert gpu is not None and "H100" in gpu and "compute capability 8.0" in gpu
    assert "\n" not in version + gpu


def test_refit_weights_are_the_graphs_initializers_in_its_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = {"w_q": rng.standard_normal((4, 4)).astype(np.float16),
               "w_k": rng.standard_normal((4, 4)).astype(np.float16),
               "bias": rng.standard_normal(4).astype(np.float16)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_q"], ["q"]), helper.make_node("MatMul", ["q", "w_k"], ["k"]),
         helper.make_node("Add", ["k", "bias"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    saved = load_file(str(save_refit_weights(tmp_path / "model.onnx", {"w_q", "w_k"}, tmp_path / "w.safetensors")))
    assert saved.keys() == {"w_q", "w_k"}  # only what adapters can touch
    for name, array in saved.items():
        assert array.dtype == np.float16 and array.tobytes() == weights[name].tobytes()


def test_the_timing_cache_is_per_tensorrt_and_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(TIMING_CACHE_ENV, str(tmp_path))
    assert timing_cache_path("10.13.0.35", "9.0") == tmp_path / "timing-trt10.13.0.35-sm90.cache"
    assert timing_cache_path("10.13.0.35", "9.0") != timing_cache_path("10.13.0.35", "8.9")
    monkeypatch.delenv(TIMING_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert timing_cache_path("11.4.0.106", "9.0").parent == tmp_path / "xdg" / "dgate" / "tensorrt"


# The two module shapes that matter: TensorRT 10 still has the weak-typing precision flags, 11 has not.
STRONGLY_TYPED = 5
TRT10 = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16=0, INT8=1, FP8=2, REFIT_INDIVIDUAL=3),
                        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED))
TRT11 = SimpleNamespace(BuilderFlag=SimpleNamespace(REFIT_INDIVIDUAL=3),
                        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED))


@pytest.mark.parametrize("trt", [TRT10, TRT11], ids=["tensorrt10", "tensorrt11"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_float_plans_are_strongly_typed_on_both(trt: SimpleNamespace, precision: str) -> None:
    assert network_flags(trt, precision) == 1 << STRONGLY_TYPED


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_graphs_are_weakly_typed_with_fp16_on_tensorrt10_only(precision: str) -> None:
    assert weakly_typed_quantization(TRT10, precision) and network_flags(TRT10, precision) == 0
    assert not weakly_typed_quantization(TRT11, precision) and network_flags(TRT11, precision) == 1 << STRONGLY_TYPED
