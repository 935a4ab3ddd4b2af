"""Training checkpoints: `<output_dir>/checkpoint-<step>/` holds everything a resumed run needs to end
exactly where an uninterrupted one would: the trainable weights, the optimizer, LR-schedule and
grad-scaler states, the step and every random generator's state. It also holds the adapter as a
loadable LoRA file, so any checkpoint can be tried with `load_lora_weights` as it is."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dgate.finetune.files import make_readable

logger = logging.getLogger(__name__)

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE, WEIGHTS, OPTIMIZER, RNG, LORA = ("state.json", "trainable.safetensors", "optimizer.pt", "rng.safetensors",
                                        "pytorch_lora_weights.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not belong to this run's adapters."""


@dataclass
class TrainingState:
    """What the loop holds between steps, besides the models."""

    parameters: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # noise, timesteps, VAE sampling, flips
    scaler: torch.amp.GradScaler | None = None


def _rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    tensors = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, np.asarray(keys).tolist(), position, has_gauss, cached]}


def _restore_python_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints under `output_dir`, by step."""
    found = []
    if Path(output_dir).is_dir():
        for path in Path(output_dir).iterdir():
            match = PATTERN.match(path.name)
            if match and (path / STATE).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(output_dir: Path, step: int, state: TrainingState, config: dict[str, Any],
                    write_lora: Any, total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> (staged in a temporary folder, then renamed, so a crash never leaves a
    half checkpoint that `--resume latest` would pick). `write_lora(path)` writes the loadable adapter."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    staging = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=output_dir))
    try:
        save_file({name: p.detach().cpu().contiguous() for name, p in state.parameters.items()}, staging / WEIGHTS)
        torch.save({"optimizer": state.optimizer.state_dict(), "lr_scheduler": state.lr_scheduler.state_dict(),
                    "scaler": state.scaler.state_dict() if state.scaler else None}, staging / OPTIMIZER)
        save_file(_rng_tensors(state.generator), staging / RNG)
        write_lora(staging / LORA)
        record = {"step": step, "parameters": {n: list(p.shape) for n, p in state.parameters.items()},
                  "rng": _python_rng(), "config": config}
        (staging / STATE).write_text(json.dumps(record, indent=1), "utf-8")
        make_readable(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if total_limit is not None:
        for _, old in checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    logger.info("saved %s", final)
    return final


def resolve(resume: str, output_dir: Path) -> Path | None:
    """`latest` → the newest checkpoint under `output_dir` (None if there is none yet: a fresh start);
    anything else is a checkpoint folder that must exist."""
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE).is_file():
        raise CheckpointError(f"not a checkpoint folder (no {STATE}): {path}")
    return path


def load_checkpoint(path: Path, state: TrainingState) -> int:
    """Restore `state` (in place) and the global random generators from `path`; return its step."""
    record = json.loads((Path(path) / STATE).read_text("utf-8"))
    expected = {n: list(p.shape) for n, p in state.parameters.items()}
    if record["parameters"] != expected:
        raise CheckpointError(f"{path} was written for different adapters (target modules, rank or "
                              "train_text_encoder changed); start a new output_dir or keep the config")
    weights = load_file(Path(path) / WEIGHTS)
    with torch.no_grad():
        for name, parameter in state.parameters.items():
            parameter.copy_(weights[name])
    saved = torch.load(Path(path) / OPTIMIZER, weights_only=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if state.scaler is not None and saved["scaler"] is not None:
        state.scaler.load_state_dict(saved["scaler"])
    rng = load_file(Path(path) / RNG)
    state.generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch_cpu"])
    cuda = [rng[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in rng]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    _restore_python_rng(record["rng"])
    return int(record["step"])
