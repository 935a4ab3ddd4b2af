"""`dgate finetune`: LoRA and DreamBooth training on the tiny SD pipeline, end to end through the CLI, and
the adapter read back by diffusers' own `load_lora_weights`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from dgate.cli import main

PROMPT = "a photo of a fox, a red circle on a blue background"
STEPS = 2  # inference steps of every image compared here


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dgate.tiny import build_tiny_pipeline

    return build_tiny_pipeline("tiny-sd", tmp_path_factory.mktemp("finetune-models"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetune-data") / "tiny-fox"
    assert main(["finetune", "make-dataset", "--out", str(out), "--count", "4", "--size", "64",
                 "--prefix", "a photo of a fox, "]) == 0
    return out


def write_config(path: Path, model: Path, dataset: Path, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "pretrained_model": str(model), "dataset": str(dataset),
        "output": str(path.parent / "out" / "fox.safetensors"), "output_dir": str(path.parent / "run"),
        "rank": 4, "lora_alpha": 8,  # alpha != rank: the file must carry it for the scale to survive loading
        "resolution": 64, "batch_size": 2, "max_steps": 4, "learning_rate": 1e-3, "device": "cpu",
        "checkpoint_every": 2, "validation_prompt": PROMPT, "validation_inference_steps": STEPS,
        "validation_guidance_scale": 1.0, "wandb": False,
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config), "utf-8")
    return path


def generate(pipe: Any, prompt: str = PROMPT, seed: int = 0) -> np.ndarray:
    image = pipe(prompt=prompt, height=64, width=64, num_inference_steps=STEPS, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image, dtype=np.int16)


def load_pipe(model: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_cli_adapter_loads_in_diffusers_and_matches_training(tiny_sd: Path, dataset: Path,
                                                                  tmp_path: Path) -> None:
    """The installed `dgate` command, W&B on in offline mode (from $WANDB_MODE, no network): the written
    adapter, loaded into a fresh pipeline by diffusers, reproduces the image the trained model made
    in-process (samples/final.png) and differs from the base pipeline's."""
    config = write_config(tmp_path / "tiny.yaml", tiny_sd, dataset, wandb=True, max_steps=8)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    dgate = Path(sys.executable).parent / "dgate"
    result = subprocess.run([str(dgate), "finetune", "lora", "--config", str(config), "--max-steps", "6"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output, run = tmp_path / "out" / "fox.safetensors", tmp_path / "run"
    assert f"adapter: {output} (step 6" in result.stdout  # --max-steps overrode the config's 8
    assert not list(output.parent.glob(".*")), "the atomic write left its staging folder behind"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].rglob("*.wandb")), list(run.rglob("*"))

    with safe_open(str(output), "pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    assert metadata["unet.lora_alpha"] == 8 and metadata["unet.r"] == 4

    pipe = load_pipe(tiny_sd)
    base = generate(pipe)
    pipe.load_lora_weights(str(output))
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8
    adapted = generate(pipe)
    trained = np.asarray(Image.open(run / "samples" / "final.png"), dtype=np.int16)
    assert np.abs(adapted - trained).max() <= 1, "loading the adapter does not reproduce the trained model"
    assert np.abs(adapted - base).mean() > 0.2, "training did not change the image"


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_sd: Path, dataset: Path, tmp_path: Path) -> None:
    """4 steps straight vs 2 steps, then `--resume latest` to 4: the same adapter. Every random source is
    in play: LoRA dropout (global RNG), flips, noise and timesteps (the training generator), the text
    encoder's adapter, gradient accumulation, and a warmup schedule."""
    common = {"lora_dropout": 0.1, "random_flip": True, "train_text_encoder": True,
              "gradient_accumulation_steps": 2, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 1,
              "validation_prompt": None}
    straight = write_config(tmp_path / "straight.yaml", tiny_sd, dataset, **common,
                            output=str(tmp_path / "straight.safetensors"), output_dir=str(tmp_path / "straight"))
    split = write_config(tmp_path / "split.yaml", tiny_sd, dataset, **common,
                         output=str(tmp_path / "split.safetensors"), output_dir=str(tmp_path / "split"))
    assert main(["finetune", "lora", "--config", str(straight)]) == 0
    assert main(["finetune", "lora", "--config", str(split), "--max-steps", "2"]) == 0
    halfway = load_file(tmp_path / "split.safetensors")
    assert main(["finetune", "lora", "--config", str(split), "--resume", "latest"]) == 0

    expected, resumed = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "split.safetensors")
    assert expected.keys() == resumed.keys() and any(k.startswith("text_encoder.") for k in expected)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert any(not torch.equal(halfway[k], expected[k]) for k in expected), "steps 3-4 changed nothing"
    # The checkpoint's own LoRA file is the adapter as it was at that step.
    at_two = load_file(tmp_path / "straight" / "checkpoint-2" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(at_two[k], halfway[k]) for k in halfway)


def test_dreambooth_prior_preservation_generates_class_images(tiny_sd: Path, dataset: Path,
                                                              tmp_path: Path) -> None:
    class_dir = tmp_path / "class_images"
    config = write_config(
        tmp_path / "db.yaml", tiny_sd, dataset, max_steps=2, batch_size=1, validation_prompt="a photo of sks fox",
        dreambooth={"instance_prompt": "a photo of sks fox", "class_prompt": "a photo of a fox",
                    "with_prior_preservation": True, "num_class_images": 3, "class_data_dir": str(class_dir),
                    "class_inference_steps": STEPS, "class_guidance_scale": 1.0, "sample_batch_size": 2})
    with pytest.raises(SystemExit, match="run `dgate finetune dreambooth`"):
        main(["finetune", "lora", "--config", str(config)])
    assert main(["finetune", "dreambooth", "--config", str(config)]) == 0

    images = sorted(class_dir.glob("*.png"))
    assert [p.name for p in images] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    base = load_pipe(tiny_sd)
    for index in (0, 2):  # image i is the *base* pipeline's, from generator seed + i
        class_image = np.asarray(Image.open(images[index]), dtype=np.int16)
        assert np.abs(class_image - generate(base, "a photo of a fox", seed=index)).max() <= 1
    weights = load_file(tmp_path / "out" / "fox.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in weights.items())
    base.load_lora_weights(str(tmp_path / "out" / "fox.safetensors"))
    trained = np.asarray(Image.open(tmp_path / "run" / "samples" / "final.png"), dtype=np.int16)
    assert np.abs(generate(base, "a photo of sks fox") - trained).max() <= 1


def test_sdxl_with_text_encoders_round_trips(dataset: Path, tmp_path: Path) -> None:
    """SDXL: both text encoders' LoRA and the size micro-conditioning; diffusers' SDXL loader reads it back."""
    from dgate.tiny import build_tiny_pipeline

    model = build_tiny_pipeline("tiny-sdxl", tmp_path / "models")
    config = write_config(tmp_path / "sdxl.yaml", model, dataset, max_steps=2, train_text_encoder=True)
    assert main(["finetune", "lora", "--config", str(config)]) == 0
    output = tmp_path / "out" / "fox.safetensors"
    assert {k.split(".")[0] for k in load_file(output)} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = load_pipe(model)
    pipe.load_lora_weights(str(output))
    trained = np.asarray(Image.open(tmp_path / "run" / "samples" / "final.png"), dtype=np.int16)
    assert np.abs(generate(pipe) - trained).max() <= 1


@pytest.mark.parametrize(("overrides", "message"), [
    ({"learning_rat": 1e-4}, r"unknown config key\(s\): learning_rat \(did you mean learning_rate\?\)"),
    ({"rank": "four"}, "rank must be an integer"),
    ({"mixed_precision": "fp8"}, "mixed_precision must be one of no, fp16, bf16"),
    ({"output": "fox.bin"}, "output must be a .safetensors file"),
    ({"dreambooth": {"instance_prompt": "sks", "with_prior_preservation": True}},
     "with_prior_preservation needs dreambooth.class_prompt"),
])
def test_bad_config_is_refused_with_a_clear_error(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    config = write_config(tmp_path / "bad.yaml", tmp_path / "model", tmp_path / "data", **overrides)
    method = "dreambooth" if "dreambooth" in overrides else "lora"
    with pytest.raises(SystemExit, match=message):
        main(["finetune", method, "--config", str(config)])


def test_other_pipelines_and_missing_inputs_are_refused(tiny_sd: Path, dataset: Path, tmp_path: Path) -> None:
    pixart = tmp_path / "pixart"
    pixart.mkdir()
    (pixart / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}), "utf-8")
    config = write_config(tmp_path / "pixart.yaml", pixart, dataset)
    with pytest.raises(SystemExit, match="is a PixArtSigmaPipeline; finetuning supports StableDiffusionPipeline"):
        main(["finetune", "lora", "--config", str(config)])
    config = write_config(tmp_path / "nodata.yaml", tiny_sd, tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="dataset folder not found"):
        main(["finetune", "lora", "--config", str(config)])
    config = write_config(tmp_path / "ok.yaml", tiny_sd, dataset)
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        main(["finetune", "lora", "--config", str(config), "--resume", str(tmp_path / "checkpoint-9")])


def test_make_dataset_is_deterministic_and_both_caption_layouts_load(tmp_path: Path) -> None:
    from dgate.finetune.dataset import scan_folder

    for name, layout in (("a", "txt"), ("b", "txt"), ("c", "jsonl")):
        assert main(["finetune", "make-dataset", "--out", str(tmp_path / name), "--count", "3", "--size", "32",
                     "--seed", "7", "--captions", layout]) == 0
    a, b, c = (scan_folder(tmp_path / name) for name in "abc")
    assert [e.caption for e in a] == [e.caption for e in b] == [e.caption for e in c]
    assert all(x.image.read_bytes() == y.image.read_bytes() for x, y in zip(a, b, strict=True))
    assert not list((tmp_path / "c").glob("*.txt")) and (tmp_path / "c" / "metadata.jsonl").is_file()
    assert a[0].caption.startswith("a ") and " on a " in a[0].caption
