"""The evaluation as one Weights & Biases run: summary scalars per model, the table, plots and grids.

The default mode is "offline": the run is written under `<out>/wandb/offline-run-*` with no network and
no login, and can be uploaded later with `wandb sync <that folder>`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dgate.eval.config import WandbMode
from dgate.eval.results import ModelRow

logger = logging.getLogger(__name__)
SCALARS = ("clip_score", "fid", "lpips", "psnr", "latency_ms_mean", "latency_ms_p95", "throughput_ips")


def summary_scalars(rows: Sequence[ModelRow]) -> dict[str, float]:
    """{"<model>/<metric>": value} for every finite value (a metric not computed is left out)."""
    scalars = {}
    for row in rows:
        for key in SCALARS:
            value = getattr(row, key)
            if value is not None and math.isfinite(value):
                scalars[f"{row.model}/{key}"] = float(value)
    return scalars


def log_to_wandb(rows: Sequence[ModelRow], table_columns: Sequence[str], table_rows: Sequence[Sequence[str]],
                 plots: Mapping[str, Path], grids: Sequence[tuple[Path, str]], out: Path, project: str,
                 mode: WandbMode, config: Mapping[str, Any]) -> Path | None:
    """Log one run; returns its folder (`<out>/wandb/offline-run-*` offline), or None when mode is "disabled".

    `grids` are (png, caption) pairs; `table_rows` the report's text cells, so W&B shows what results.md shows.
    """
    if mode == "disabled":
        return None
    import wandb

    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, dir=str(out), mode=mode, job_type="eval", config=dict(config),
                     settings=wandb.Settings(console="off", silent=True))
    try:
        scalars = summary_scalars(rows)
        run.log({
            **scalars,
            "results": wandb.Table(columns=list(table_columns), data=[list(cells) for cells in table_rows]),
            **{f"plots/{name}": wandb.Image(str(path)) for name, path in plots.items()},
            "grids": [wandb.Image(str(path), caption=caption) for path, caption in grids],
        })
        for key, value in scalars.items():
            run.summary[key] = value
        run_dir = Path(run.dir).parent  # run.dir is <run folder>/files
    finally:
        run.finish()
    logger.info("W&B run (%s) in %s", mode, run_dir)
    return run_dir
