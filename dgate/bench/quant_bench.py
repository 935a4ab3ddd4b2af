"""`dgate bench-quant`: the denoiser in FP32, FP16 and INT8 in ONNX Runtime, side by side in one run.

Per step: median/p95 latency of one CFG batch (2 rows) at the pipeline's default size, the file
size, and the error against the FP32 PyTorch model on the same inputs. INT8 comes in two forms:
modelopt's calibrated Q/DQ (`dgate calibrate`, what is served) and ONNX Runtime's own static
quantization (`onnxruntime.quantization.quantize_static`, per-channel QDQ, calibrated on random
inputs: a speed reference for the CPU, not a quality one).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _files_bytes(model_file: Path) -> int:
    return sum(p.stat().st_size for p in model_file.parent.glob(model_file.name + "*"))


def _time(session: Any, feeds: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    session.run(None, feeds)  # warm-up: first-run allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3, float(np.percentile(times, 95)) * 1e3


def _ort_static_int8(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def run_quant_bench(args: argparse.Namespace) -> int:
    import torch

    from dgate.core.component_modules import component_module
    from dgate.core.families import spec_from_pipeline
    from dgate.core.onnx_session import create_session
    from dgate.export.onnx_export import MODEL_FILE, convert_to_fp16, export_onnx, sample_inputs
    from dgate.export.pipeline_export import load_pipeline, pipeline_name, trace_inputs
    from dgate.export.quantized import load_quantization, quantized_files

    pipe = load_pipeline(args.model)
    spec = spec_from_pipeline(pipe, pipeline_name(args.model))
    component = spec.denoiser_component
    load_quantization(args.quantized, pipe, component, "onnxruntime")  # the same checks as export
    module = component_module(pipe, spec, component)
    size = args.size or spec.limits.default_width
    inputs = sample_inputs(spec, component, 2, size, size, seed=0)
    feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
    with torch.inference_mode():
        reference = module(*inputs.values())
    reference = (reference[0] if isinstance(reference, tuple | list) else reference).float().numpy()

    rows = []
    with tempfile.TemporaryDirectory(prefix="dgate-bench-quant-") as scratch_root:
        scratch = Path(scratch_root)
        fp32 = export_onnx(module, spec, component, trace_inputs(spec, component), scratch / "fp32")[MODEL_FILE]
        variants = {
            "fp32": fp32,
            "fp16": convert_to_fp16(fp32, scratch / "fp16")[MODEL_FILE],
            "int8 modelopt (served)": quantized_files(args.quantized, component)[MODEL_FILE],
        }
        if not args.skip_ort_static:
            calibration = [{k: v.numpy() for k, v in sample_inputs(spec, component, 2, size, size, seed=s).items()}
                           for s in range(args.ort_calibration_batches)]
            variants["int8 onnxruntime static"] = _ort_static_int8(fp32, scratch / "ort-int8.onnx", calibration)
        for label, path in variants.items():
            session = create_session(path)
            output = session.run(None, feeds)[0].astype(np.float32)
            median, p95 = _time(session, feeds, args.runs)
            rows.append((label, median, p95, _files_bytes(path), float(np.max(np.abs(output - reference)))))
            del session

    base = rows[0][1]
    print(f"dgate bench-quant: {spec.name} {component}, batch 2 (one CFG step) at {size}x{size}, "
          f"{args.runs} runs, ONNX Runtime CPU")
    print(f"{'variant':<26}{'median ms':>11}{'p95 ms':>10}{'vs fp32':>9}{'size MB':>10}{'max |err| vs fp32 torch':>26}")
    for label, median, p95, size_bytes, error in rows:
        print(f"{label:<26}{median:>11.2f}{p95:>10.2f}{base / median:>8.2f}x{size_bytes / 1e6:>10.2f}{error:>26.3g}")
    return 0


def add_quant_bench_parser(sub: Any) -> None:
    parser = sub.add_parser("bench-quant", help="the denoiser in FP32 / FP16 / INT8 (modelopt and ORT static): "
                            "latency per step, size and error, in one run")
    parser.add_argument("--model", required=True, help="the diffusers pipeline that was calibrated")
    parser.add_argument("--quantized", type=Path, required=True, help="its `dgate calibrate --precision int8` folder")
    parser.add_argument("--size", type=int, help="image size (default: the pipeline's)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ort-calibration-batches", type=int, default=4)
    parser.add_argument("--skip-ort-static", action="store_true")
    parser.set_defaults(func=run_quant_bench)
