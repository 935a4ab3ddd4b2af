"""Metrics logging: Weights & Biases when the config asks for it, otherwise nothing."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from dgate.finetune.config import WandbMode

logger = logging.getLogger(__name__)


class Tracker:
    """No tracking: every call is a no-op (`wandb: false`)."""

    run_dir: Path | None = None

    def log(self, values: dict[str, float], step: int) -> None:
        pass

    def log_image(self, key: str, image: Image.Image, caption: str, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, project: str, run_name: str | None, mode: WandbMode | None, output_dir: Path,
                 config: dict[str, Any], resume_step: int) -> None:
        import wandb

        output_dir.mkdir(parents=True, exist_ok=True)
        # mode None lets wandb read $WANDB_MODE itself; "offline" needs no network nor login, and the
        # run (under <output_dir>/wandb/) can be uploaded later with `wandb sync`.
        self._wandb = wandb
        self._run = wandb.init(project=project, name=run_name, mode=mode, dir=str(output_dir), config=config,
                               resume=None, settings=wandb.Settings(console="off", silent=True))
        if resume_step:
            self._run.summary["resumed_from_step"] = resume_step
        self.run_dir = Path(self._run.dir).parent if getattr(self._run, "dir", None) else None
        logger.info("W&B run %s (mode %s) in %s", self._run.id, mode or os.environ.get("WANDB_MODE", "online"),
                    self.run_dir)

    def log(self, values: dict[str, float], step: int) -> None:
        self._run.log(values, step=step)

    def log_image(self, key: str, image: Image.Image, caption: str, step: int) -> None:
        self._run.log({key: self._wandb.Image(image, caption=caption)}, step=step)

    def finish(self) -> None:
        self._run.finish()


def make_tracker(enabled: bool, project: str, run_name: str | None, mode: WandbMode | None, output_dir: Path,
                 config: dict[str, Any], resume_step: int = 0) -> Tracker:
    if not enabled:
        return Tracker()
    return WandbTracker(project, run_name, mode, output_dir, config, resume_step)
