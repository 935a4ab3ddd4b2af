"""`run_eval`: check the flags, ask the server, load the metrics, generate, score, report, log.

Everything that can fail on the user's input (a weights flag, a file, the server, a model name) fails
before the first image is generated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dgate.eval.config import EvalConfig
from dgate.eval.generate import (
    GenerationOptions,
    ModelRun,
    check_models_served,
    generate_all,
    make_client,
    precision_labels,
    served_models,
)
from dgate.eval.model_size import denoiser_bytes
from dgate.eval.random_weights import is_random_weights
from dgate.eval.report import TABLE_COLUMNS, table_rows, write_report
from dgate.eval.results import EvalResult, ModelRow
from dgate.eval.scoring import ModelScores, check_metric_flags, load_scorers, score_runs

logger = logging.getLogger(__name__)
# Below this many images per set FID is far from its large-sample value (the usual practice is >= 10k).
FID_STABLE_IMAGES = 10_000
SMALL_RUN_IMAGES = 30


def run_eval(config: EvalConfig) -> EvalResult:
    """Generate `config.models` x prompts through the server, score them and write the report under `config.out`.

    Raises `MetricWeightsError` (a weights flag missing / a file unreadable), `EvalServerError` (server
    unreachable, model not served, a request refused) or `EvalConfigError`, all before any image is
    generated except a request refused midway.
    """
    prompts = config.load_prompts()
    check_metric_flags(config)
    client = make_client(config.base_url, config.api_key, config.timeout_s)
    served = served_models(client)
    check_models_served(served, config.models, config.base_url)
    labels = precision_labels(served, config.models, config.labels)
    scorers = load_scorers(config)

    out = Path(config.out)
    images_dir = out / "images"
    options = GenerationOptions(seed=config.seed, size=config.size, steps=config.steps,
                                guidance_scale=config.guidance_scale, concurrency=config.concurrency,
                                warmup=config.warmup)
    runs = generate_all(client, config.models, labels, prompts, images_dir, options)
    scores = score_runs(runs, scorers, config.reference_images)
    rows = tuple(_row(run, score, position == 0, config.model_repository)
                 for position, (run, score) in enumerate(zip(runs, scores, strict=True)))
    notes = tuple(describe(config, len(prompts)))
    header = _header(config, len(prompts))
    files = write_report(out, rows, runs, scores, header, notes)

    wandb_dir = None
    if config.wandb:
        from dgate.eval.tracking import log_to_wandb

        grids = [(path, f"#{image.index} seed {image.seed}: {image.prompt}")
                 for path, image in zip(files.grids, runs[0].images, strict=True)]
        wandb_dir = log_to_wandb(rows, TABLE_COLUMNS, table_rows(rows), files.plots, grids, out,
                                 config.wandb_project, config.wandb_mode, _wandb_config(config, len(prompts)))
    return EvalResult(rows=rows, out=out, results_json=files.results_json, results_md=files.results_md,
                      plots=files.plots, grids=files.grids, images_dir=images_dir, wandb_dir=wandb_dir, notes=notes)


def _row(run: ModelRun, score: ModelScores, reference: bool, repository: Path | None) -> ModelRow:
    size = denoiser_bytes(repository, run.model) if repository is not None else None
    return ModelRow(model=run.model, precision=run.precision, images=len(run.images), clip_score=score.clip_score,
                    fid=score.fid, lpips=score.lpips, psnr=score.psnr, latency_ms_mean=run.latency_ms_mean,
                    latency_ms_p95=run.latency_ms_p95, throughput_ips=run.throughput_ips, reference=reference,
                    denoiser_mb=None if size is None else size / 1e6)


def _header(config: EvalConfig, prompt_count: int) -> dict[str, Any]:
    source = "given in the config" if config.prompts is not None else str(config.prompts_file)
    return {
        "server": config.base_url, "prompts": f"{prompt_count} from {source}",
        "seeds": f"{config.seed} + prompt index (the same for every model)",
        "size": config.size or "server default", "steps": config.steps or "server default",
        "guidance_scale": config.guidance_scale if config.guidance_scale is not None else "server default",
        "metrics": ", ".join(config.metrics) or "none",
    }


def describe(config: EvalConfig, prompt_count: int) -> list[str]:
    """The report's lines on the reference, the metric weights, and the caveats that apply."""
    reference = config.reference_model
    fid_reference = (f"the images in {config.reference_images}" if config.reference_images is not None
                     else f"`{reference}`'s {prompt_count} images")
    notes = [f"Reference: `{reference}` (the first --model) for LPIPS and PSNR, image by image with the same prompt "
             f"and seed" + (f"; FID reference set: {fid_reference}" if "fid" in config.metrics else "") + "."]
    weights = _weights(config)
    if weights:
        notes.append("Metric weights: " + "; ".join(f"{name}: {description}" for name, description, _ in weights) + ".")
    random = [name for name, _, path in weights if is_random_weights(path)]
    if random:
        notes.append(f"**Random weights** for {', '.join(random)} (written by dgate.eval.random_weights): these "
                     "scores exercise the code and mean nothing about image quality.")
    if "fid" in config.metrics and prompt_count < FID_STABLE_IMAGES:
        notes.append(f"FID from {prompt_count} images per model is noisy and biased upward (the usual practice is "
                     f"{FID_STABLE_IMAGES:,}+; below 2,048 the 2048-d covariance is rank-deficient): compare models "
                     "within this run only, never with published FIDs.")
    if prompt_count < SMALL_RUN_IMAGES:
        notes.append(f"Only {prompt_count} images per model: every mean here has a wide margin of error.")
    if "psnr" in config.metrics:
        notes.append("PSNR: identical images count as 100 dB in the mean.")
    notes.append(f"Latency: wall clock per request at concurrency {config.concurrency}, after {config.warmup} "
                 "untimed warm-up request(s) per model; throughput = images / wall time of the model's run.")
    return notes


def _weights(config: EvalConfig) -> list[tuple[str, str, Path]]:
    """(metric name, description, path) of each selected metric's weights file."""
    entries: Sequence[tuple[str, str, str, Path | None]] = (
        ("clip", "CLIP", f"open_clip {config.clip_arch} from", config.clip_weights),
        ("fid", "FID", "torch-fidelity InceptionV3 from", config.inception_weights),
        ("lpips", "LPIPS", "lpips v0.1 linear layers + AlexNet from", config.lpips_weights),
    )
    return [(name, f"{what} {path}", path) for metric, name, what, path in entries
            if metric in config.metrics and path is not None]


def _wandb_config(config: EvalConfig, prompt_count: int) -> dict[str, Any]:
    values = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()
              if key not in ("api_key", "prompts")}  # the key is a secret; the prompts are in the table/grids
    values["labels"] = dict(config.labels)
    values["prompt_count"] = prompt_count
    return values
