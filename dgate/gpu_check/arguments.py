"""The command line of `dgate gpu-check` (argparse only: `dgate --help` must not import torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = ("check D-Gate's GPU path in process: parity on each engine, LoRA switching, quantized engines, "
               "full-size latency and batching; one table and a JSON report (runs on the CPU too)")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--workdir", type=Path, help="where the tiny models and components are written "
                                                     "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=None,
                        help="SD 1.5 and SDXL full-size latency (random weights, FP16); default: on for cuda")
    return parser
