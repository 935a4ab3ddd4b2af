"""What one `dgate eval` run does: a frozen, documented config that the CLI and tests build alike."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dgate.eval.errors import EvalConfigError

METRICS: tuple[str, ...] = ("clip", "fid", "lpips", "psnr")
WandbMode = Literal["offline", "online", "disabled"]
# The prompt set that ships with the package (package data of dgate.eval).
DEFAULT_PROMPTS = Path(__file__).with_name("prompts.txt")
DEFAULT_BASE_URL = "http://127.0.0.1:9000/v1"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: every listed model renders the same prompts with the same seeds.

    `models[0]` is the reference: LPIPS and PSNR compare each model's image with its image for the same
    prompt and seed, and FID uses its images as the reference set unless `reference_images` names a
    folder of real images. Seed of prompt i = `seed + i`. The weights paths are local files only
    (`--clip-weights`, `--inception-weights`, `--lpips-weights`); each is required when its metric is
    in `metrics` (PSNR needs none).
    """

    models: tuple[str, ...]
    out: Path
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "dgate"
    prompts_file: Path = DEFAULT_PROMPTS
    prompts: tuple[str, ...] | None = None  # given directly, instead of reading prompts_file
    num_prompts: int | None = None  # the first N prompts; None: all
    seed: int = 0
    size: str | None = None  # "WIDTHxHEIGHT"; None: the server's default size
    steps: int | None = None
    guidance_scale: float | None = None
    concurrency: int = 1
    warmup: int = 1  # unrecorded requests per model before timing (first-request costs stay out)
    timeout_s: float = 600.0
    metrics: tuple[str, ...] = METRICS
    clip_weights: Path | None = None
    clip_arch: str = "ViT-B-32"
    inception_weights: Path | None = None
    lpips_weights: Path | None = None
    reference_images: Path | None = None
    model_repository: Path | None = None  # for the denoiser's size on disk (the API does not report it)
    device: str = "auto"  # torch device of the metric networks; auto: cuda when available
    labels: Mapping[str, str] = field(default_factory=dict)  # model -> precision label override
    wandb: bool = True
    wandb_project: str = "dgate-eval"
    wandb_mode: WandbMode = "offline"

    def __post_init__(self) -> None:
        if not self.models:
            raise EvalConfigError("give at least one --model (the first is the reference)")
        if len(set(self.models)) != len(self.models):
            raise EvalConfigError(f"a --model is listed twice: {', '.join(self.models)}")
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown:
            raise EvalConfigError(f"unknown metric(s) {', '.join(unknown)}; expected some of {','.join(METRICS)}")
        if self.size is not None:
            parse_size(self.size)
        if self.concurrency < 1:
            raise EvalConfigError("--concurrency must be at least 1")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise EvalConfigError("--num-prompts must be at least 1")
        if self.seed < 0:
            raise EvalConfigError("--seed must be >= 0")

    @property
    def reference_model(self) -> str:
        return self.models[0]

    def load_prompts(self) -> list[str]:
        """The prompts of this run: non-empty lines of the file (or `prompts`), the first `num_prompts`."""
        if self.prompts is not None:
            prompts = [prompt.strip() for prompt in self.prompts if prompt.strip()]
        else:
            try:
                text = Path(self.prompts_file).read_text(encoding="utf-8")
            except OSError as error:
                raise EvalConfigError(f"--prompts: cannot read {self.prompts_file}: {error.strerror}") from None
            prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if self.num_prompts is not None:
            prompts = prompts[: self.num_prompts]
        if not prompts:
            raise EvalConfigError(f"no prompts in {self.prompts_file}")
        return prompts


def parse_size(size: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if not match:
        raise EvalConfigError(f"--size must be WIDTHxHEIGHT, e.g. 64x64, not {size!r}")
    return int(match[1]), int(match[2])


def parse_metrics(text: str) -> tuple[str, ...]:
    """`clip,fid` -> ("clip", "fid"); `all` or empty -> every metric; `none` -> no metric."""
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    if not names or names == ("all",):
        return METRICS
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise EvalConfigError(f"unknown metric(s) {', '.join(unknown)}; expected some of {','.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """`["tiny-sd-int8=int8 smoothquant"]` -> {"tiny-sd-int8": "int8 smoothquant"}."""
    labels: dict[str, str] = {}
    for item in items:
        model, sep, label = item.partition("=")
        if not sep or not model.strip() or not label.strip():
            raise EvalConfigError(f"--label must be MODEL=TEXT, not {item!r}")
        labels[model.strip()] = label.strip()
    return labels
