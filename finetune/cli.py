"""`dgate finetune lora|dreambooth|make-dataset`. Imports nothing heavy at module level: `dgate --help`
and the torch-free frontend import dgate.cli, which adds this group."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cmd_train(args: argparse.Namespace) -> int:
    from dgate.finetune.checkpoint import CheckpointError
    from dgate.finetune.config import ConfigError, load_config
    from dgate.finetune.dataset import DatasetError
    from dgate.finetune.pipeline import UnsupportedPipelineError

    overrides: dict[str, Any] = {"max_steps": args.max_steps, "output": args.output, "output_dir": args.output_dir,
                                 "device": args.device, "seed": args.seed}
    if args.no_wandb:
        overrides["wandb"] = False
    try:
        config = load_config(args.config, args.method, overrides)
    except ConfigError as error:
        raise SystemExit(f"dgate finetune {args.method}: {error}") from None

    from dgate.finetune.train import train

    try:
        result = train(config, resume=args.resume)
    except (DatasetError, UnsupportedPipelineError, CheckpointError) as error:
        raise SystemExit(f"dgate finetune {args.method}: {error}") from None
    print(f"adapter: {result.output} (step {result.steps}; {result.trained_steps} steps in {result.seconds:.1f} s)")
    for sample in result.samples:
        print(f"sample: {sample}")
    if result.wandb_dir:
        print(f"wandb run: {result.wandb_dir}")
    return 0


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from dgate.finetune.synthetic import make_dataset

    paths = make_dataset(args.out, args.count, size=args.size, seed=args.seed, captions=args.captions,
                         prefix=args.prefix)
    print(f"{len(paths)} images with captions in {args.out}")
    return 0


def add_finetune_parser(sub: Any) -> None:
    """Add the `finetune` command group to `sub`, the subparsers of `dgate`."""
    finetune = sub.add_parser("finetune", help="LoRA / DreamBooth finetuning with peft (writes .safetensors adapters)")
    group = finetune.add_subparsers(dest="finetune_command", required=True)
    for method, text in (("lora", "train a LoRA adapter on captioned images"),
                         ("dreambooth", "DreamBooth LoRA: one subject + instance prompt, optional prior preservation")):
        command = group.add_parser(method, help=text)
        command.add_argument("--config", type=Path, required=True, help="YAML config (see finetune/configs/)")
        command.add_argument("--max-steps", type=int, help="override max_steps")
        command.add_argument("--output", help="override output (the .safetensors adapter)")
        command.add_argument("--output-dir", help="override output_dir (checkpoints, samples, W&B run)")
        command.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override device")
        command.add_argument("--seed", type=int, help="override seed")
        command.add_argument("--resume", metavar="latest|PATH",
                             help="continue from the newest checkpoint in output_dir (a fresh start if there is "
                                  "none) or from a checkpoint folder")
        command.add_argument("--no-wandb", action="store_true", help="do not log to W&B whatever the config says")
        command.set_defaults(func=cmd_train, method=method)

    dataset = group.add_parser("make-dataset", help="write a tiny synthetic captioned dataset (coloured shapes)")
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--count", type=int, default=8)
    dataset.add_argument("--size", type=int, default=64)
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--captions", choices=("txt", "jsonl"), default="txt",
                         help="a .txt beside each image, or one metadata.jsonl")
    dataset.add_argument("--prefix", default="", help="text put before every caption, e.g. 'a photo of sks fox, '")
    dataset.set_defaults(func=cmd_make_dataset)
