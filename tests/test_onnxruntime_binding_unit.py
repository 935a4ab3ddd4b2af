"""ONNX Runtime IO binding (dgate.core.engines.onnxruntime_engine.run_bound) on the CPU device.

GPU instances run every component through `run_bound` on 'cuda:N'; the same function runs on 'cpu',
so its binding, dtype conversion and output hand-over are checked here against `session.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dgate.core.engines import Placement
from dgate.core.engines.onnxruntime_engine import OnnxRuntimeEngine, _to_torch, run_bound

CPU = torch.device("cpu")


def text_like_model(path: Path, sample_type: int = TensorProto.FLOAT) -> Path:
    """sample [batch, 4] (float) and input_ids [batch, 3] (int64) -> out [batch, 4], hidden [batch, 3, 4]."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "weight")
    nodes = [
        helper.make_node("Cast", ["sample"], ["sample32"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["table", "input_ids"], ["hidden"]),
        helper.make_node("ReduceSum", ["hidden", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["sample32", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "pooled"], ["out32"]),
        helper.make_node("Cast", ["out32"], ["out"], to=sample_type),
    ]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "text_like",
        [helper.make_tensor_value_info("sample", sample_type, ["batch", 4]),
         helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("out", sample_type, ["batch", 4]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 3, 4])],
        [table, weight, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def session_of(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"sample": rng.standard_normal((batch, 4)).astype(np.float32),
            "input_ids": rng.integers(0, 10, (batch, 3)).astype(np.int64)}


OUTPUTS = ["out", "hidden"]


@pytest.fixture
def session(tmp_path: Path) -> ort.InferenceSession:
    return session_of(text_like_model(tmp_path / "model.onnx"))


def assert_same(bound: list[torch.Tensor], expected: list[np.ndarray]) -> None:
    assert len(bound) == len(expected)
    for tensor, array in zip(bound, expected, strict=True):
        assert isinstance(tensor, torch.Tensor) and tensor.device == CPU
        assert tensor.numpy().dtype == array.dtype and tensor.shape == array.shape
        np.testing.assert_array_equal(tensor.numpy(), array)


@pytest.mark.parametrize("batch", [1, 3])  # the dynamic batch axis: shapes differ from run to run
def test_numpy_inputs_equal_session_run(session: ort.InferenceSession, batch: int) -> None:
    inputs = feeds(batch)
    assert_same(run_bound(session, OUTPUTS, inputs, CPU), session.run(OUTPUTS, inputs))


def test_torch_inputs_equal_session_run(session: ort.InferenceSession) -> None:
    inputs = feeds(2)
    tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
    assert_same(run_bound(session, OUTPUTS, tensors, CPU), session.run(OUTPUTS, inputs))


def test_non_contiguous_inputs(session: ort.InferenceSession) -> None:
    inputs = feeds(4)
    # Transposed / strided views of the same values: the binding must compact them first.
    sample = torch.from_numpy(np.ascontiguousarray(inputs["sample"].T)).t()
    ids = torch.from_numpy(np.repeat(inputs["input_ids"], 2, axis=0))[::2]
    assert not sample.is_contiguous() and not ids.is_contiguous()
    flipped = {"sample": np.ascontiguousarray(inputs["sample"][::-1])[::-1],  # negative strides (numpy)
               "input_ids": torch.from_numpy(inputs["input_ids"])}
    expected = session.run(OUTPUTS, inputs)
    assert_same(run_bound(session, OUTPUTS, {"sample": sample, "input_ids": ids}, CPU), expected)
    assert_same(run_bound(session, OUTPUTS, flipped, CPU), expected)


def test_inputs_converted_to_the_session_types(session: ort.InferenceSession) -> None:
    inputs = feeds(2)
    # int32 ids and float64 samples, as a caller might hand them: cast to int64 / float32 on binding.
    loose = {"sample": torch.from_numpy(inputs["sample"].astype(np.float64)),
             "input_ids": torch.from_numpy(inputs["input_ids"].astype(np.int32))}
    assert_same(run_bound(session, OUTPUTS, loose, CPU), session.run(OUTPUTS, inputs))


def test_float16_input_and_output(tmp_path: Path) -> None:
    session = session_of(text_like_model(tmp_path / "model16.onnx", TensorProto.FLOAT16))
    assert session.get_inputs()[0].type == "tensor(float16)"
    inputs = feeds(2)
    expected = session.run(OUTPUTS, {**inputs, "sample": inputs["sample"].astype(np.float16)})
    bound = run_bound(session, OUTPUTS, inputs, CPU)  # an FP32 sample, bound as FP16
    assert bound[0].dtype == torch.float16
    assert_same(bound, expected)


def test_outputs_share_ort_memory(session: ort.InferenceSession) -> None:
    """The hand-over to torch is a view of the OrtValue, not a copy, by either DLPack route."""
    binding = session.io_binding()
    inputs = feeds(2)
    for name, array in inputs.items():
        binding.bind_cpu_input(name, array)
    for name in OUTPUTS:
        binding.bind_output(name, "cpu", 0)
    session.run_with_iobinding(binding)
    expected = session.run(OUTPUTS, inputs)

    class NativeDLPack:
        """An OrtValue as onnxruntime 1.21+ hands it out before the wrapper exposed __dlpack__."""

        def __init__(self, value: Any) -> None:
            self._ortvalue = value._ortvalue

    for value, array in zip(binding.get_outputs(), expected, strict=True):
        for source in (value, NativeDLPack(value)):
            tensor = _to_torch(source)
            assert tensor.data_ptr() == value.data_ptr()
            np.testing.assert_array_equal(tensor.numpy(), array)


def test_unknown_input_is_refused(session: ort.InferenceSession) -> None:
    with pytest.raises(ValueError, match="no such input"):
        run_bound(session, OUTPUTS, {**feeds(1), "extra": np.zeros(1, np.float32)}, CPU)


def test_cpu_engine_keeps_session_run(session: ort.InferenceSession) -> None:
    """The CPU instance's contract is unchanged: numpy in (or torch), numpy out, from session.run."""
    engine = OnnxRuntimeEngine(session, OUTPUTS, Placement())
    inputs = feeds(2)
    outputs = engine.run({**inputs, "sample": torch.from_numpy(inputs["sample"])})
    for output, array in zip(outputs, session.run(OUTPUTS, inputs), strict=True):
        assert isinstance(output, np.ndarray)
        np.testing.assert_array_equal(output, array)
