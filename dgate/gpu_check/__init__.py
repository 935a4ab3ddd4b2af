"""`dgate gpu-check`: D-Gate's GPU path checked in process, one table and a JSON report.

Sections: (a) parity of the tiny SD, SDXL and Flux pipelines on each engine against diffusers on the
same device (FP32 within 2/255; FP16 PSNR on a GPU), (b) LoRA switch time against a component reload
and A -> B -> A exactness, (c) INT8/FP8 (TensorRT only: skipped without it), (d) full-size SD 1.5 and
SDXL latency and per-step overhead (random weights, FP16), (e) the denoiser's time per row by batch.
It runs on the CPU too (tiny models, few steps); what a machine lacks (onnxruntime-gpu, TensorRT) is
reported as skipped with the reason, never as a failure. Modules by job: `environment` (what runs
here), `workspace` (models and engines), one module per section, `report`, `runner` (the plan, running
it), `arguments` (the command line, torch-free for `dgate --help`).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`python -m dgate.gpu_check [args]`; the exit code (nonzero when a case failed)."""
    from dgate.gpu_check.runner import main as run_main  # torch loads when the check runs

    return run_main(argv)
