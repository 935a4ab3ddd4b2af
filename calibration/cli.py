"""`dgate calibrate`: argparse only at import time (torch and modelopt load when the command runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dgate.calibration.recipe import DEFAULT_ALPHA, DEFAULT_EXCLUDED, CalibrationRecipe, read_prompts, shipped_prompts


def _adapter(text: str) -> tuple[Path, float]:
    """`PATH` or `PATH:SCALE`."""
    path, separator, scale = text.rpartition(":")
    if separator:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass
    return Path(text), 1.0


def recipe_from_args(args: argparse.Namespace) -> CalibrationRecipe:
    excluded = DEFAULT_EXCLUDED if args.exclude is None else tuple(p for p in args.exclude.split(",") if p)
    return CalibrationRecipe(
        precision=args.precision, alpha=args.alpha, excluded=excluded + tuple(args.also_exclude or ()),
        steps=args.steps, guidance_scale=args.guidance_scale, size=args.size, seed=args.seed,
        batch_size=args.batch_size, fused_adapters=tuple(args.fuse_lora or ()),
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    try:
        recipe = recipe_from_args(args)
        prompts = read_prompts(args.prompts, args.num_prompts)
    except (OSError, ValueError) as error:
        print(f"dgate calibrate: {error}", file=sys.stderr)
        return 2
    from dgate.calibration.calibrate import calibrate
    from dgate.core.errors import ExportError

    try:
        result = calibrate(args.model, args.out, recipe, prompts)
    except ExportError as error:
        print(f"dgate calibrate: {error}", file=sys.stderr)
        return 2
    q = result.quantization
    print(f"{q.component}: {q.quantized_layers} layers quantized to {q.precision} ({q.algorithm}"
          f"{f', alpha {q.alpha}' if q.alpha is not None else ''}) over {q.calibration_prompts} prompts x "
          f"{q.calibration_steps} steps; {result.onnx_bytes / 1e6:.1f} MB")
    if result.onnx_error is None:
        print("FP8 Q/DQ are TensorRT operators: serve it with `dgate export --quantized ... --engine tensorrt "
              "--device gpu` on an NVIDIA GPU")
    else:
        print(f"ONNX Runtime vs the fake-quantized PyTorch model: max abs error {result.onnx_error:.2e}")
    print(f"quantized model: {result.out}")
    return 0


def add_calibrate_parser(sub: Any) -> None:
    parser = sub.add_parser("calibrate", help="INT8 (SmoothQuant) / FP8 post-training quantization of the "
                            "UNet/transformer with nvidia-modelopt")
    parser.add_argument("--model", required=True, help="a diffusers pipeline directory or hub id")
    parser.add_argument("--precision", choices=("int8", "fp8"), required=True,
                        help="int8: SmoothQuant, runs in ONNX Runtime and TensorRT; fp8 (E4M3): TensorRT only")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist or be empty)")
    parser.add_argument("--prompts", type=Path, default=shipped_prompts(),
                        help="calibration prompts, one per line (default: the 64 that ship with dgate)")
    parser.add_argument("--num-prompts", type=int, help="use the first N prompts")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="SmoothQuant migration strength (INT8)")
    parser.add_argument("--exclude", help="comma-separated module-name patterns kept in full precision "
                        f"(replaces the default: {','.join(DEFAULT_EXCLUDED)}; '' quantizes everything)")
    parser.add_argument("--also-exclude", action="append", help="a pattern added to the default exclusions")
    parser.add_argument("--steps", type=int, help="denoising steps per prompt (default: the pipeline's)")
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--size", type=int, help="calibration image size (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call")
    parser.add_argument("--fuse-lora", type=_adapter, action="append", metavar="PATH[:SCALE]",
                        help="merge this LoRA into the weights before calibration (repeatable); requests "
                             "naming the same adapter file and scale are then served by the quantized pipeline")
    parser.set_defaults(func=cmd_calibrate)
