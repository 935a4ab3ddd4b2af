"""The tiny offline pipelines: they reload, generate deterministically, and rebuild byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the hub

from diffusers import DiffusionPipeline, PixArtSigmaPipeline, StableDiffusionPipeline  # noqa: E402
from transformers import CLIPTokenizer, T5Tokenizer  # noqa: E402

from dgate.tiny import TINY_PIPELINES, build_tiny_pipeline, build_tiny_pipelines  # noqa: E402

CLASSES = {"tiny-sd": StableDiffusionPipeline, "tiny-pixart": PixArtSigmaPipeline}
TEXTS = [
    "a red fox",
    "A photo of an astronaut riding a horse on Mars, 4k!!",
    "naïve café — 東京 🦊 zebra's xylophone quokka",
    "  spaces\tand\nnewlines  ",
    "",
    "word " * 400,
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = build_tiny_pipelines(tmp_path_factory.mktemp("tiny"))
    return {p.name: p for p in paths}


@pytest.fixture(scope="module")
def pipes(built: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    return {name: DiffusionPipeline.from_pretrained(path) for name, path in built.items()}


def _generate(pipe: DiffusionPipeline, seed: int) -> np.ndarray:
    extra = {"use_resolution_binning": False, "clean_caption": False} if isinstance(pipe, PixArtSigmaPipeline) else {}
    out = pipe(
        "a red fox",
        num_inference_steps=4,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **extra,
    )
    return out.images


def test_builds_every_pipeline(built: dict[str, Path]) -> None:
    assert tuple(built) == TINY_PIPELINES
    for name, path in built.items():
        assert path.name == name and (path / "model_index.json").is_file()


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny pipeline"):
        build_tiny_pipeline("tiny-nope", tmp_path)


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_reload_classes(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    pipe = pipes[name]
    assert type(pipe) is CLASSES[name]
    assert pipe.vae_scale_factor == 2 and pipe.vae.config.latent_channels == 4
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    if name == "tiny-sd":
        assert pipe.safety_checker is None and pipe.feature_extractor is None
        assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1
    else:
        assert not pipe.transformer.config.use_additional_conditions
        assert pipe.transformer.config.out_channels == 2 * pipe.vae.config.latent_channels


@pytest.mark.parametrize("name", TINY_PIPELINES)
def test_generate_is_seeded(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    first = _generate(pipes[name], 0)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, _generate(pipes[name], 0))
    assert not np.array_equal(first, _generate(pipes[name], 1))


def test_rebuild_is_byte_identical(built: dict[str, Path], tmp_path: Path) -> None:
    for name, path in built.items():
        again = build_tiny_pipeline(name, tmp_path)
        files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
        assert any(f.suffix == ".safetensors" for f in files)
        for f in files:
            assert (path / f).read_bytes() == (again / f).read_bytes(), f"{name}/{f} differs"


def test_clip_tokenizer(built: dict[str, Path]) -> None:
    tok = CLIPTokenizer.from_pretrained(built["tiny-sd"] / "tokenizer")
    assert tok.model_max_length == 77
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|startoftext|>"
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    assert tok("a red fox").input_ids == [
        tok.bos_token_id,
        *tok.convert_tokens_to_ids(["a</w>", "red</w>", "fox</w>"]),
        tok.eos_token_id,
    ]
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]  # byte-level: nothing is unknown
    batch = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (len(TEXTS), 77)
    # The classic vocab.json + merges.txt are saved too and give the same tokenizer.
    classic = CLIPTokenizer(
        vocab=str(built["tiny-sd"] / "tokenizer" / "vocab.json"),
        merges=str(built["tiny-sd"] / "tokenizer" / "merges.txt"),
    )
    assert [classic(t).input_ids for t in TEXTS] == [tok(t).input_ids for t in TEXTS]


def test_t5_tokenizer(built: dict[str, Path]) -> None:
    tok = T5Tokenizer.from_pretrained(built["tiny-pixart"] / "tokenizer")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length >= 300
    assert tok.convert_ids_to_tokens(tok("a red fox").input_ids) == ["▁a", "▁red", "▁fox", "</s>"]
    for text in TEXTS:
        assert tok(text).input_ids[-1] == tok.eos_token_id
    batch = tok(TEXTS, padding="max_length", max_length=300, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (len(TEXTS), 300)
    assert batch.attention_mask[0].sum() == 4 and (batch.input_ids[0, 4:] == tok.pad_token_id).all()
