"""(e) Batching: the denoiser's time per row at several batch sizes on the torch engine (what Triton's
dynamic batcher gains by merging the steps of concurrent requests)."""

from __future__ import annotations

import torch

from dgate.core.engines import ComponentEngine
from dgate.core.pipeline_spec import PipelineSpec
from dgate.gpu_check.report import MEASURED, CaseResult
from dgate.gpu_check.timing import median_seconds

SECTION = "batching"
BATCHES = (2, 8, 16)


def case_name(name: str, batch: int) -> str:
    return f"{name} batch {batch}"


def batching_case(name: str, engine_label: str, denoiser: ComponentEngine, spec: PipelineSpec, batch: int,
                  size: int, device: str, repeats: int) -> CaseResult:
    from dgate.export.onnx_export import sample_inputs

    inputs = {key: value.to(device) for key, value in
              sample_inputs(spec, spec.denoiser_component, batch, size, size, seed=0).items()}
    with torch.inference_mode():
        call_s = median_seconds(lambda: denoiser.run(inputs), device, repeats)
    per_row_ms = call_s * 1000 / batch
    return CaseResult(SECTION, case_name(name, batch), engine_label, MEASURED,
                      f"{per_row_ms:.2f} ms/row ({call_s * 1000:.1f} ms/call, {size}px)",
                      values={"batch": batch, "size": size, "ms_per_row": per_row_ms, "ms_per_call": call_s * 1000,
                              "repeats": repeats})
