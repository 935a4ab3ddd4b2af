"""(b) LoRA: switching adapters on a loaded engine against reloading the component, and A -> B -> A
exactness (the same bytes after switching away and back, base weights restored bitwise)."""

from __future__ import annotations

import statistics
from functools import partial
from typing import Any

import numpy as np

from dgate.gpu_check.report import FAIL, PASS, CaseResult, skipped
from dgate.gpu_check.timing import median_seconds, timed
from dgate.gpu_check.workspace import Workspace, as_numpy

SECTION = "lora"
PIPELINE = "tiny-sd"
ENGINES = ("torch", "onnxruntime", "tensorrt")
SWITCHES = 5  # A -> B and B -> A pairs timed
RELOADS = 3


def lora_case(workspace: Workspace, engine: str) -> CaseResult:
    from dgate.export.onnx_export import sample_inputs

    missing = workspace.environment.lora_missing(engine)
    if missing is not None:
        return skipped(SECTION, PIPELINE, engine, missing)
    device = workspace.environment.device
    model = workspace.tiny(PIPELINE)
    component = model.spec.denoiser_component
    a, b = workspace.adapters(model)
    loaded = workspace.load(model, engine, component, lora=True)  # the first load pays the imports
    reload_s = median_seconds(lambda: workspace.load(model, engine, component, lora=True), device, RELOADS, warmup=0)
    limits = model.spec.limits
    inputs = {name: tensor.numpy() for name, tensor in
              sample_inputs(model.spec, component, 2, limits.default_height, limits.default_width, seed=0).items()}

    def run(lora: str) -> np.ndarray:
        return as_numpy(loaded.run(inputs, lora)[0])

    base, first_a, first_b, again_a, again_base = (run(lora) for lora in ("", a, b, a, ""))
    exact = first_a.tobytes() == again_a.tobytes() and base.tobytes() == again_base.tobytes()
    changed = not np.array_equal(first_a, base) and not np.array_equal(first_a, first_b)
    # Every run below changes the adapter set (its deltas are cached by now), then runs that keep it.
    switching = [timed(partial(run, lora), device)[0] for lora in (b, a) * SWITCHES]
    steady = [timed(partial(run, a), device)[0] for _ in range(2 * SWITCHES)]
    switch_ms = max(0.0, statistics.median(switching) - statistics.median(steady)) * 1000
    values: dict[str, Any] = {
        "switch_ms": switch_ms, "reload_ms": reload_s * 1000, "run_with_switch_ms": statistics.median(switching) * 1000,
        "run_without_switch_ms": statistics.median(steady) * 1000, "switches": 2 * SWITCHES, "reloads": RELOADS,
        "a_b_a_exact": exact, "adapters_change_output": changed,
    }
    verdict = PASS if exact and changed else FAIL
    reason = "" if verdict == PASS else ("A -> B -> A is not bitwise the same" if not exact
                                         else "the adapters do not change the output")
    figure = f"switch {switch_ms:.2f} ms vs reload {reload_s * 1000:.0f} ms; A->B->A {'exact' if exact else 'DIFFERS'}"
    return CaseResult(SECTION, PIPELINE, engine, verdict, figure, reason, values)
