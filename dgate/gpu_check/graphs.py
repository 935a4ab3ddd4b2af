"""(g) CUDA graphs on the TensorRT engine: tiny SD's UNet plan run eagerly and replayed from its captured
graph (DGATE_TENSORRT_CUDA_GRAPHS=1) on the same inputs: the same bytes, and the time per call of each."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dgate.gpu_check.report import FAIL, PASS, CaseResult, skipped
from dgate.gpu_check.timing import median_seconds
from dgate.gpu_check.workspace import Workspace, as_numpy

SECTION = "graphs"
PIPELINE = "tiny-sd"
ENGINE = "tensorrt"
REPEATS = 20


def graphs_case(workspace: Workspace) -> CaseResult:
    from dgate.export.onnx_export import sample_inputs

    missing = workspace.environment.engine_missing(ENGINE)
    if missing is not None:
        return skipped(SECTION, PIPELINE, ENGINE, missing)
    model = workspace.tiny(PIPELINE)
    component = model.spec.denoiser_component
    engine: Any = workspace.load(model, ENGINE, component)  # a TensorRTEngine: its graphs are switched here
    limits = model.spec.limits
    inputs = {name: tensor.to("cuda") for name, tensor in
              sample_inputs(model.spec, component, 2, limits.default_height, limits.default_width, seed=0).items()}
    device = workspace.environment.device
    results, times = {}, {}
    for label, enabled in (("eager", False), ("graph", True)):
        engine.graphs.enabled = enabled
        with torch.inference_mode():
            results[label] = as_numpy(engine.run(inputs)[0])  # the graph's capture happens here
            times[label] = median_seconds(lambda: engine.run(inputs), device, REPEATS) * 1000
    same = np.array_equal(results["eager"], results["graph"])
    values = {"eager_ms": times["eager"], "graph_ms": times["graph"], "same_bytes": same, "repeats": REPEATS}
    verdict = "same" if same else "DIFFERENT"
    figure = f"eager {times['eager']:.2f} ms vs graph {times['graph']:.2f} ms a call; {verdict} bytes"
    return CaseResult(SECTION, PIPELINE, ENGINE, PASS if same else FAIL, figure,
                      "" if same else "the replayed graph's output differs from the eager run's", values)
