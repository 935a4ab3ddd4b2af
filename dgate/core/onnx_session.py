"""ONNX Runtime sessions with D-Gate's options, in one place (component models, export checks, bench)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def session_options(threads: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (all cores)
    # ORT's pool threads busy-wait after every run by default. Each component is its own stub
    # process, so idle-spinning text encoder / VAE / UNet threads steal the cores from whichever
    # model runs next (`dgate bench`, 2 cores: UNet step 42 -> 26 ms, 4.7 -> 7.3 img/s at c=1).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(path: Path, threads: int = 0, device_id: int | None = None) -> ort.InferenceSession:
    """A session on `path` (its external-data file, if any, is read from the same folder): on the CPU,
    or with `device_id` on that GPU through the CUDA execution provider (onnxruntime-gpu)."""
    providers: list[Any] = ["CPUExecutionProvider"]
    if device_id is not None:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this ONNX Runtime has no CUDA execution provider: install onnxruntime-gpu "
                               "(make install GPU=1) or serve the component with --engine torch")
        providers = [("CUDAExecutionProvider", {"device_id": device_id})]
    return ort.InferenceSession(str(path), session_options(threads), providers=providers)


@dataclass
class RefittableSession:
    """A session whose listed weights are numpy buffers we own: writing them changes the next run."""

    session: ort.InferenceSession
    weights: dict[str, np.ndarray]
    _values: list[ort.OrtValue]  # the OrtValues wrap `weights` without a copy; keep them alive


def load_initializers(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """Writable copies of the named initializers, reading only those from an external-data file."""
    # onnx is imported here, not at the top: every component process imports this module, and the
    # package costs each one memory although only LoRA's first use needs it.
    import onnx
    from onnx import external_data_helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    arrays = {}
    for tensor in model.graph.initializer:
        if tensor.name in names:
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.load_external_data_for_tensor(tensor, str(path.parent))
            arrays[tensor.name] = numpy_helper.to_array(tensor).copy()
    return arrays


def create_refittable_session(path: Path, names: set[str], threads: int = 0) -> RefittableSession:
    """A session over `path` whose initializers `names` are user-owned and updatable in place.

    ONNX Runtime copies a weight when it pre-packs it (MatMul/Conv kernels) or re-lays it out
    (ORT_ENABLE_ALL's NCHWc transform of convolutions); either way later writes would go unseen.
    So: pre-packing off and ORT_ENABLE_EXTENDED (tiny-sd UNet: 44 ms a run against 32-39 ms
    fully optimised; see ARCHITECTURE.md "LoRA").
    """
    weights = load_initializers(path, names)
    options = session_options(threads)
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    values = []
    for name, array in weights.items():
        value = ort.OrtValue.ortvalue_from_numpy(array)
        values.append(value)
        options.add_initializer(name, value)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return RefittableSession(session, weights, values)


def load_all_initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of the model at `path` (with its external data), by name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
