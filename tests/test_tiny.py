"""The tiny offline pipelines: they reload, generate deterministically, and rebuild byte for byte.

Also the full-size random-weight pipelines' configs, checked by their parameter counts on the meta device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the hub

from diffusers import (  # noqa: E402
    AnimateDiffPipeline,
    DiffusionPipeline,
    FluxPipeline,
    PixArtSigmaPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
)
from PIL import Image  # noqa: E402
from transformers import CLIPTokenizer, T5Tokenizer  # noqa: E402

from dgate.cli import main  # noqa: E402
from dgate.full_size import FULL_SIZE_PIPELINES, build_on_meta, parameter_counts  # noqa: E402
from dgate.tiny import ALL_TINY_PIPELINES, TINY_PIPELINES, build_tiny_pipeline, build_tiny_pipelines  # noqa: E402

CLASSES = {
    "tiny-sd": StableDiffusionPipeline,
    "tiny-pixart": PixArtSigmaPipeline,
    "tiny-sdxl": StableDiffusionXLPipeline,
    "tiny-sd3": StableDiffusion3Pipeline,
    "tiny-flux": FluxPipeline,
    "tiny-flux-schnell": FluxPipeline,
    "tiny-animatediff": AnimateDiffPipeline,
    "tiny-svd": StableVideoDiffusionPipeline,
}
VIDEO_PIPELINES = ("tiny-animatediff", "tiny-svd")
IMAGE_PIPELINES = tuple(name for name in ALL_TINY_PIPELINES if name not in VIDEO_PIPELINES)
# Every text encoder / tokenizer pair: (tokenizer folder, pad token) per pipeline.
TOKENIZERS = {
    "tiny-sd": {"tokenizer": "<|endoftext|>"},
    "tiny-pixart": {"tokenizer": "<pad>"},
    "tiny-sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    "tiny-sd3": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!", "tokenizer_3": "<pad>"},
    "tiny-flux": {"tokenizer": "<|endoftext|>", "tokenizer_2": "<pad>"},
    "tiny-flux-schnell": {"tokenizer": "<|endoftext|>", "tokenizer_2": "<pad>"},
    "tiny-animatediff": {"tokenizer": "<|endoftext|>"},
    "tiny-svd": {},
}
CLIP_FOLDERS = [(name, folder) for name, folders in TOKENIZERS.items() for folder, pad in folders.items()
                if pad != "<pad>" and name != "tiny-flux-schnell"]
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
    root = tmp_path_factory.mktemp("tiny")
    paths = build_tiny_pipelines(root) + [build_tiny_pipeline("tiny-flux-schnell", root)]
    return {p.name: p for p in paths}


@pytest.fixture(scope="module")
def pipes(built: dict[str, Path]) -> dict[str, DiffusionPipeline]:
    loaded = {name: DiffusionPipeline.from_pretrained(path) for name, path in built.items()}
    for pipe in loaded.values():
        pipe.set_progress_bar_config(disable=True)
    return loaded


def _generate(pipe: DiffusionPipeline, seed: int, steps: int = 4, prompt: str = "a red fox") -> np.ndarray:
    extra = {"use_resolution_binning": False, "clean_caption": False} if isinstance(pipe, PixArtSigmaPipeline) else {}
    out = pipe(
        prompt,
        num_inference_steps=steps,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **extra,
    )
    return out.images


@contextmanager
def _library_warnings() -> Iterator[list[logging.LogRecord]]:
    """Warnings diffusers and transformers log (their loggers do not propagate, so caplog misses them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_builds_every_pipeline(built: dict[str, Path]) -> None:
    assert TINY_PIPELINES == ("tiny-sd", "tiny-pixart", "tiny-sdxl", "tiny-sd3", "tiny-flux", *VIDEO_PIPELINES)
    assert ALL_TINY_PIPELINES == (*TINY_PIPELINES, "tiny-flux-schnell")  # schnell: by name only
    assert tuple(built) == ALL_TINY_PIPELINES
    for name, path in built.items():
        assert path.name == name and (path / "model_index.json").is_file()


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny pipeline"):
        build_tiny_pipeline("tiny-nope", tmp_path)


def test_cli_builds_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiny", "--out", str(tmp_path), "--name", "tiny-flux-schnell"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "tiny-flux-schnell")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-flux-schnell"]
    for argv in (["tiny", "--name", "full-sd15"], ["tiny", "--full-size", "--name", "tiny-sd"]):
        with pytest.raises(SystemExit, match="unknown"):
            main([*argv, "--out", str(tmp_path)])


@pytest.mark.parametrize("name", ALL_TINY_PIPELINES)
def test_reload_classes(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    pipe = pipes[name]
    assert type(pipe) is CLASSES[name]
    assert pipe.vae_scale_factor == 2
    for folder in TOKENIZERS[name]:
        encoder = getattr(pipe, folder.replace("tokenizer", "text_encoder"))
        assert encoder.config.vocab_size == len(getattr(pipe, folder))
    if name in ("tiny-sd", "tiny-sdxl"):
        assert pipe.vae.config.latent_channels == 4
        assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1
        assert pipe.scheduler.config.timestep_spacing == "leading"
    if name == "tiny-sd":
        assert pipe.safety_checker is None and pipe.feature_extractor is None
    elif name == "tiny-pixart":
        assert pipe.vae.config.latent_channels == 4
        assert not pipe.transformer.config.use_additional_conditions
        assert pipe.transformer.config.out_channels == 2 * pipe.vae.config.latent_channels
    elif name in ("tiny-sd3", "tiny-flux", "tiny-flux-schnell"):
        # SD3/Flux VAEs: 16 channels, shifted as well as scaled, no quant convs.
        assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor is not None
        assert pipe.vae.quant_conv is None and pipe.vae.post_quant_conv is None


def test_sdxl_config(pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes["tiny-sdxl"]
    unet, te, te2 = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    # Both encoders' penultimate hidden states, concatenated; the second's pooled projection + 6 time ids.
    assert unet.cross_attention_dim == te.hidden_size + te2.hidden_size == 64
    assert unet.addition_embed_type == "text_time"
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + te2.projection_dim
    assert pipe.config.force_zeros_for_empty_prompt
    assert pipe.tokenizer.pad_token == "<|endoftext|>"
    assert (pipe.tokenizer_2.pad_token, pipe.tokenizer_2.pad_token_id) == ("!", 0)
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)


def test_sd3_config(pipes: dict[str, DiffusionPipeline]) -> None:
    pipe = pipes["tiny-sd3"]
    tr, te, te2, te3 = (pipe.transformer.config, pipe.text_encoder.config, pipe.text_encoder_2.config,
                        pipe.text_encoder_3.config)
    assert {type(pipe.text_encoder).__name__, type(pipe.text_encoder_2).__name__} == {"CLIPTextModelWithProjection"}
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
    # The CLIP hidden states (32 + 32) are zero-padded to T5's width, which is the joint attention width.
    assert tr.joint_attention_dim == te3.d_model >= te.hidden_size + te2.hidden_size
    assert tr.pooled_projection_dim == te.projection_dim + te2.projection_dim
    assert tr.in_channels == tr.out_channels == pipe.vae.config.latent_channels == 16
    assert tr.pos_embed_max_size * tr.patch_size * pipe.vae_scale_factor >= 128
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (1.5305, 0.0609)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer_3.pad_token_id == 0


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-flux-schnell"])
def test_flux_config(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    pipe = pipes[name]
    tr, scheduler = pipe.transformer.config, pipe.scheduler.config
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert tr.in_channels == 4 * pipe.vae.config.latent_channels  # 2x2 packed latents
    assert tr.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert tr.pooled_projection_dim == pipe.text_encoder.config.hidden_size  # CLIP's pooled output
    assert sum(tr.axes_dims_rope) == tr.attention_head_dim
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    if name == "tiny-flux":  # FLUX.1-dev: guidance-distilled, resolution-dependent shift
        assert tr.guidance_embeds and scheduler.use_dynamic_shifting and scheduler.shift == 3.0
        assert (scheduler.base_shift, scheduler.max_shift) == (0.5, 1.15)
        assert (scheduler.base_image_seq_len, scheduler.max_image_seq_len) == (256, 4096)
    else:  # FLUX.1-schnell: no guidance embedding, no shift
        assert not tr.guidance_embeds and not scheduler.use_dynamic_shifting and scheduler.shift == 1.0


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_generate_is_seeded(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    first = _generate(pipes[name], 0)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, _generate(pipes[name], 0))
    assert not np.array_equal(first, _generate(pipes[name], 1))


@pytest.mark.parametrize("name", IMAGE_PIPELINES)
def test_short_prompt_no_warnings(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    with _library_warnings() as records:
        image = _generate(pipes[name], 0, steps=2, prompt="A photo of an astronaut riding a horse on the moon")
    assert [r.getMessage() for r in records] == []  # no truncation (or any other) warning
    assert (image * 255).round().astype(np.uint8).std() > 5  # not a flat image
    with _library_warnings() as records:  # a long prompt does warn: the check above can see warnings
        _generate(pipes[name], 0, steps=1, prompt="word " * 400)
    assert any("truncated" in r.getMessage() for r in records)


def _video(pipe: DiffusionPipeline, seed: int) -> np.ndarray:
    common = {"num_frames": 4, "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np",
              "generator": torch.Generator().manual_seed(seed)}
    if isinstance(pipe, StableVideoDiffusionPipeline):
        picture = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
        return pipe(picture, **common).frames
    return pipe("a paper boat on a river", **common).frames


@pytest.mark.parametrize("name", VIDEO_PIPELINES)
def test_video_pipelines_generate_seeded_frames(pipes: dict[str, DiffusionPipeline], name: str) -> None:
    first = _video(pipes[name], 0)
    assert first.shape == (1, 4, 64, 64, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, _video(pipes[name], 0))
    assert not np.array_equal(first, _video(pipes[name], 1))
    assert np.abs(np.diff(first[0], axis=0)).max() > 0  # frames differ: a video, not one image repeated


def test_video_configs(pipes: dict[str, DiffusionPipeline]) -> None:
    animatediff, svd = pipes["tiny-animatediff"], pipes["tiny-svd"]
    assert type(animatediff.unet).__name__ == "UNetMotionModel"  # SD UNet + motion adapter, as saved
    assert type(animatediff.scheduler).__name__ == "DDIMScheduler" and not animatediff.scheduler.config.clip_sample
    assert svd.image_encoder.config.image_size == 224  # the pipeline resizes the conditioning image to 224
    assert svd.unet.config.in_channels == 2 * svd.vae.config.latent_channels  # noise + image latents
    assert svd.unet.config.projection_class_embeddings_input_dim == 3 * svd.unet.config.addition_time_embed_dim
    assert svd.scheduler.config.timestep_type == "continuous" and svd.scheduler.config.use_karras_sigmas


def test_rebuild_is_byte_identical(built: dict[str, Path], tmp_path: Path) -> None:
    for name, path in built.items():
        again = build_tiny_pipeline(name, tmp_path)
        files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
        assert any(f.suffix == ".safetensors" for f in files)
        for f in files:
            assert (path / f).read_bytes() == (again / f).read_bytes(), f"{name}/{f} differs"


def test_second_encoders_differ(pipes: dict[str, DiffusionPipeline]) -> None:
    # Same shapes, but seeded apart: the two CLIP towers are not copies of each other.
    pipe = pipes["tiny-sdxl"]
    first = pipe.text_encoder.get_input_embeddings().weight
    second = pipe.text_encoder_2.get_input_embeddings().weight
    assert first.shape == second.shape and not torch.equal(first, second)


@pytest.mark.parametrize(("name", "folder"), CLIP_FOLDERS)
def test_clip_tokenizer(built: dict[str, Path], name: str, folder: str) -> None:
    tok = CLIPTokenizer.from_pretrained(built[name] / folder)
    pad = TOKENIZERS[name][folder]
    assert tok.model_max_length == 77
    assert tok.pad_token == pad and tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|startoftext|>"
    assert tok.pad_token_id == (0 if pad == "!" else tok.eos_token_id)  # "!" is byte token 0, as in OpenCLIP
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
    assert (batch.input_ids[0, 5:] == tok.pad_token_id).all()
    if pad == "!":
        # As with the real SDXL/SD3 tokenizer_2 under transformers (diffusers#4153), "!" is a special
        # token, so it is split out of words: "!!" is two pads, where OpenCLIP reads "!" + "!</w>".
        assert tok("!!").input_ids == [tok.bos_token_id, 0, 0, tok.eos_token_id]
    # The classic vocab.json + merges.txt are saved too and give the same tokenizer.
    files = built[name] / folder
    classic = CLIPTokenizer(vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"), pad_token=pad)
    assert [classic(t).input_ids for t in TEXTS] == [tok(t).input_ids for t in TEXTS]


@pytest.mark.parametrize(("name", "folder"), [("tiny-pixart", "tokenizer"), ("tiny-sd3", "tokenizer_3"),
                                              ("tiny-flux", "tokenizer_2")])
def test_t5_tokenizer(built: dict[str, Path], name: str, folder: str) -> None:
    tok = T5Tokenizer.from_pretrained(built[name] / folder)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.model_max_length >= 512  # Flux-dev pads prompts to 512 tokens, PixArt-Sigma to 300
    assert tok.convert_ids_to_tokens(tok("a red fox").input_ids) == ["▁a", "▁red", "▁fox", "</s>"]
    for text in TEXTS:
        assert tok(text).input_ids[-1] == tok.eos_token_id
    batch = tok(TEXTS, padding="max_length", max_length=300, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (len(TEXTS), 300)
    assert batch.attention_mask[0].sum() == 4 and (batch.input_ids[0, 4:] == tok.pad_token_id).all()


# Parameters of the published checkpoints (diffusers' and transformers' own counts of the real weights).
FULL_SIZE_PARAMETERS = {
    "full-sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "full-sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                  "vae": 83_653_863},
}


@pytest.mark.parametrize("name", FULL_SIZE_PIPELINES)
def test_full_size_parameter_counts(name: str) -> None:
    assert parameter_counts(name) == FULL_SIZE_PARAMETERS[name]  # on the meta device: nothing allocated


def test_full_size_configs() -> None:
    sd15, sdxl = build_on_meta("full-sd15"), build_on_meta("full-sdxl")
    assert type(sd15) is StableDiffusionPipeline and type(sdxl) is StableDiffusionXLPipeline
    assert sd15.unet.device.type == "meta"
    assert sd15.unet.config.cross_attention_dim == sd15.text_encoder.config.hidden_size == 768
    assert sd15.vae.config.scaling_factor == 0.18215 and sd15.vae_scale_factor == 8
    te, te2 = sdxl.text_encoder.config, sdxl.text_encoder_2.config
    assert sdxl.unet.config.cross_attention_dim == te.hidden_size + te2.hidden_size == 2048
    assert sdxl.unet.config.projection_class_embeddings_input_dim == 6 * 256 + te2.projection_dim == 2816
    assert (te2.hidden_size, te2.num_hidden_layers, te2.num_attention_heads) == (1280, 32, 20)
    assert te2.intermediate_size == 5120 and te2.projection_dim == 1280
    assert te.hidden_act == "quick_gelu" and te2.hidden_act == "gelu"
    for pipe in (sd15, sdxl):  # the tiny tokenizer's ids all fit the real 49408-token embeddings
        for folder in ("tokenizer", "tokenizer_2"):
            if hasattr(pipe, folder) and getattr(pipe, folder) is not None:
                encoder = getattr(pipe, folder.replace("tokenizer", "text_encoder"))
                assert len(getattr(pipe, folder)) <= encoder.config.vocab_size == 49408
                assert encoder.config.eos_token_id == getattr(pipe, folder).eos_token_id
