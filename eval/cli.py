"""`dgate eval`: quality, latency and throughput of served models through the OpenAI Images API.

argparse only at import time: `dgate --help` and the torch-free frontend import dgate.cli, which adds
this command; torch, the metric libraries, openai and wandb load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from dgate.eval.config import DEFAULT_BASE_URL, DEFAULT_PROMPTS, METRICS, EvalConfig, parse_labels, parse_metrics
from dgate.eval.errors import EvalError

logger = logging.getLogger(__name__)
EXIT_USER_ERROR = 2


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        models=tuple(args.model), out=args.out, base_url=args.base_url, api_key=args.api_key,
        prompts_file=args.prompts, num_prompts=args.num_prompts, seed=args.seed, size=args.size, steps=args.steps,
        guidance_scale=args.guidance_scale, concurrency=args.concurrency, warmup=args.warmup,
        timeout_s=args.timeout, metrics=parse_metrics(args.metrics), clip_weights=args.clip_weights,
        clip_arch=args.clip_arch, inception_weights=args.inception_weights, lpips_weights=args.lpips_weights,
        reference_images=args.reference_images, model_repository=args.model_repository,
        device=args.device, labels=parse_labels(args.label or []),
        wandb=not args.no_wandb, wandb_project=args.wandb_project, wandb_mode=args.wandb_mode,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; a user error (flag, weights file, server, model) is one line on stderr and exit 2."""
    for name in ("httpx", "httpx2"):  # one INFO line per request would bury the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
        from dgate.eval.run import run_eval  # torch and friends load here, not when the CLI is built

        result = run_eval(config)
    except EvalError as error:
        print(f"dgate eval: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    from dgate.eval.report import TABLE_COLUMNS, table_rows

    print(" | ".join(TABLE_COLUMNS))
    for cells in table_rows(result.rows):
        print(" | ".join(cells))
    print(f"report: {result.results_md}")
    print(f"results: {result.results_json}")
    if result.wandb_dir:
        print(f"wandb run: {result.wandb_dir}")
    return 0


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the `eval` command to `sub`, the subparsers of `dgate`."""
    parser = sub.add_parser(
        "eval", help="CLIP score / FID / LPIPS / PSNR, latency and throughput of served models (OpenAI Images API)",
        description="Generate the same prompts with the same seeds through each --model and compare them with the "
                    "first one. Metric weights are local files only: nothing is downloaded.")
    server = parser.add_argument_group("server and generation")
    server.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the OpenAI-compatible API (default %(default)s)")
    server.add_argument("--api-key", default="dgate")
    server.add_argument("--model", action="append", required=True,
                        help="served model to evaluate (repeatable); the first is the reference")
    server.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS,
                        help="prompt file, one per line (default: the 300 prompts shipped with dgate)")
    server.add_argument("--num-prompts", "--limit", dest="num_prompts", type=int, help="use only the first N prompts")
    server.add_argument("--out", type=Path, default=Path("build/eval"))
    server.add_argument("--seed", type=int, default=0, help="seed of prompt i = SEED + i (default %(default)s)")
    server.add_argument("--size", help="WIDTHxHEIGHT, e.g. 64x64 (default: the server's default size)")
    server.add_argument("--steps", type=int, help="num_inference_steps (default: the server's)")
    server.add_argument("--guidance-scale", type=float, help="default: the server's")
    server.add_argument("--concurrency", type=int, default=1, help="requests in flight per model (default 1)")
    server.add_argument("--warmup", type=int, default=1, help="untimed requests per model first (default 1)")
    server.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    server.add_argument("--label", action="append", metavar="MODEL=TEXT",
                        help="report MODEL under this precision label instead of the server's (repeatable)")

    metrics = parser.add_argument_group("metrics (local weights files only)")
    metrics.add_argument("--metrics", default=",".join(METRICS),
                         help="comma-separated subset of %(default)s, or 'none'")
    metrics.add_argument("--clip-weights", type=Path,
                         help="open_clip checkpoint of --clip-arch (.bin/.pt/.safetensors)")
    metrics.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture (default %(default)s)")
    metrics.add_argument("--inception-weights", type=Path,
                         help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (FID)")
    metrics.add_argument("--lpips-weights", type=Path,
                         help="torchvision's alexnet-owt-7be5be79.pth (LPIPS backbone; lpips ships the linear layers)")
    metrics.add_argument("--reference-images", type=Path,
                         help="folder of real images as FID's reference set (default: the first model's images)")
    metrics.add_argument("--model-repository", type=Path,
                         help="the served Triton model repository: adds each model's denoiser size on disk")
    metrics.add_argument("--device", default="auto", help="torch device of the metric networks (default: cuda if any)")

    tracking = parser.add_argument_group("Weights & Biases")
    tracking.add_argument("--wandb-project", default="dgate-eval")
    tracking.add_argument("--wandb-mode", choices=("offline", "online"), default="offline",
                          help="offline (default): OUT/wandb/offline-run-*, no network; `wandb sync` it later")
    tracking.add_argument("--no-wandb", action="store_true", help="no W&B run")
    parser.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m dgate.eval.cli ...`: the same command without the rest of `dgate`."""
    parser = argparse.ArgumentParser(prog="dgate")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
