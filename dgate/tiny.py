"""Tiny random-weight diffusers pipelines, built offline, for tests and CI.

They have the real pipelines' structure (same classes, configs shaped the same way, tokenizers that
save and reload) but only a few megabytes of weights, so export, serving and the frontend can be
exercised end to end without the Hugging Face hub, at well under a second per image on a CPU.
Everything is seeded, so two builds give byte-identical weights.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

logger = logging.getLogger(__name__)

TINY_PIPELINES: tuple[str, ...] = ("tiny-sd", "tiny-pixart")

SEED = 0
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

# The corpus both tokenizers are derived from: common English and prompt words. Words outside it
# still tokenize (CLIP falls back to bytes, T5 to single characters or <unk>).
WORDS = """
a an the of and or in on at to with from by for as is are was be it this that there here his her
their its my your our one two three four five many some all no not very more most few other new old
photo photograph picture painting drawing sketch illustration portrait landscape render art artwork
style realistic detailed high quality resolution lighting light dark shadow color colors colorful
red orange yellow green blue purple pink brown black white gray gold silver bright soft warm cold
cat dog fox bird horse cow sheep lion tiger bear wolf rabbit mouse fish whale owl eagle duck frog
man woman person people child girl boy face eyes hair hand head body smile king queen knight robot
house city street road bridge tower castle building room window door garden park forest tree trees
flower flowers grass leaf mountain mountains river lake sea ocean beach island sky cloud clouds sun
moon star stars night day morning evening sunset sunrise rain snow storm fire water ice stone wood
car train boat ship plane bicycle book table chair cup bottle apple cake bread coffee food fruit
big small large little tall long short round beautiful cute happy sad angry calm quiet wild ancient
modern future futuristic fantasy magic dream space planet galaxy astronaut riding sitting standing
running flying walking sleeping playing eating looking holding wearing under over above behind near
cinematic closeup close up wide angle view camera lens sharp focus blur bokeh studio film vintage
oil watercolor digital anime cartoon pixel minimal abstract surreal epic dramatic glowing neon
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character map, in its canonical order (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, shifted = bs[:], 0
    for b in range(256):
        if b not in bs:  # control and whitespace bytes are shifted past 255 so each byte is a visible char
            bs.append(b)
            cs.append(256 + shifted)
            shifted += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _learn_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE training until every word is one token, ties broken by the smallest pair (deterministic)."""
    byte_char = _bytes_to_unicode()
    corpus: list[list[str]] = []
    for word in words:
        symbols = [byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"  # CLIP marks the end of a word on its last symbol
        corpus.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for symbols in corpus for p in zip(symbols, symbols[1:], strict=False))
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i, symbols in enumerate(corpus):
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            corpus[i] = out
    return merges


def build_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer laid out like OpenAI's: bytes, bytes+</w>, merges, specials."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _learn_bpe_merges(WORDS.split())
    tokens += [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:  # two merges can spell the same token; it gets one id
        vocab.setdefault(tok, len(vocab))
    # Pad with <|endoftext|> like SD 1.x, and the 77-token window every SD text encoder has.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=CLIP_EOS,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        model_max_length=77,
    )


def build_t5_tokenizer() -> T5Tokenizer:
    """A Unigram T5 tokenizer: T5's special ids (<pad>=0, </s>=1, <unk>=2), whole words, then characters."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    # Scores are log-probabilities: whole words beat spelling them out, so known words are one piece.
    seen = {p for p, _ in pieces}
    for piece, score in (
        [("▁" + w, -3.0) for w in WORDS.split()]
        + [(w, -3.5) for w in WORDS.split()]
        + [("▁" + c, -6.0) for c in chars]
        + [(c, -6.5) for c in chars]
    ):
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))
    # PixArt pads prompts to max_sequence_length=300; T5's relative positions allow any length.
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _write_bpe_files(tokenizer: CLIPTokenizer, tok_dir: Path) -> None:
    """Add vocab.json + merges.txt next to tokenizer.json.

    transformers 5 saves only tokenizer.json; the classic files keep the folder loadable by transformers
    4.x's slow CLIPTokenizer (which diffusers picks from model_index.json) and by other BPE readers.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (tok_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", "utf-8")
    merges = ["#version: 0.2"] + [" ".join(pair) for pair in model["merges"]]
    (tok_dir / "merges.txt").write_text("\n".join(merges) + "\n", "utf-8")


def _build_vae() -> AutoencoderKL:
    # Two levels -> a VAE scale factor of 2 and the usual 4 latent channels.
    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )


def _build_sd() -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # CLIP pools the hidden state at the first eos
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        # diffusers' fast-test layout: cross-attention only at the 16x16 level, because self-attention
        # over a 32x32 latent (SD's order) makes each step ~4x slower on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,  # diffusers' (misnamed) head count, as in SD 1.5
    )
    # SD 1.5's noise schedule, with the Euler sampler most deployments use.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_build_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_pixart() -> PixArtSigmaPipeline:
    tokenizer = build_t5_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, which PixArt's T5-XXL is
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(SEED)
    transformer = PixArtTransformer2DModel(
        sample_size=32,  # 128 would switch on PixArt-Alpha's resolution/aspect conditioning
        use_additional_conditions=False,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,  # = heads * head_dim
        caption_channels=32,  # = T5 d_model
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    # Like PixArt-Sigma's released scheduler: DPM-Solver++ (2M) over the linear DDPM betas.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_build_vae(),
        transformer=transformer,
        scheduler=scheduler,
    )


_BUILDERS = {"tiny-sd": _build_sd, "tiny-pixart": _build_pixart}


def build_tiny_pipeline(name: str, out_dir: Path) -> Path:
    """Build the tiny pipeline `name`, save it to `out_dir / name` and return that path."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline {name!r}; expected one of {', '.join(TINY_PIPELINES)}")
    path = Path(out_dir) / name
    # Seed a forked RNG so building neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[name]()
    pipe.save_pretrained(path, safe_serialization=True)
    if isinstance(pipe.tokenizer, CLIPTokenizer):
        _write_bpe_files(pipe.tokenizer, path / "tokenizer")
    logger.info("built %s at %s", name, path)
    return path


def build_tiny_pipelines(out_dir: Path) -> list[Path]:
    """Build every tiny pipeline under `out_dir`."""
    return [build_tiny_pipeline(name, out_dir) for name in TINY_PIPELINES]
