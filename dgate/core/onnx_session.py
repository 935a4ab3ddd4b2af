"""ONNX Runtime sessions with D-Gate's options, in one place (component models, export checks, bench)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session_options(threads: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (all cores)
    # ORT's pool threads busy-wait after every run by default. Each component is its own stub
    # process, so idle-spinning text encoder / VAE / UNet threads steal the cores from whichever
    # model runs next (`dgate bench`, 2 cores: UNet step 42 -> 26 ms, 4.7 -> 7.3 img/s at c=1).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session on `path` (its external-data file, if any, is read from the same folder)."""
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
