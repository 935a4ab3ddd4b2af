"""Tiny random-weight diffusers pipelines, built offline, for tests and CI.

They have the real pipelines' structure (same classes, configs shaped the same way, tokenizers that
save and reload) but only a few megabytes of weights, so export, serving and the frontend can be
exercised end to end without the Hugging Face hub, at well under a second per image on a CPU.
Everything is seeded, so two builds give byte-identical weights.

- tiny-sd: StableDiffusionPipeline (CLIP, UNet, 4-channel VAE, Euler)
- tiny-pixart: PixArtSigmaPipeline (T5, DiT, 4-channel VAE, DPM-Solver++)
- tiny-sdxl: StableDiffusionXLPipeline (CLIP + projected CLIP, "text_time" UNet, 4-channel VAE, Euler)
- tiny-sd3: StableDiffusion3Pipeline (2 projected CLIPs + T5, MMDiT, 16-channel VAE, flow matching)
- tiny-flux: FluxPipeline, FLUX.1-dev style (CLIP pooled + T5, guidance-embedded Flux transformer,
  16-channel VAE, flow matching with resolution-dependent shift)
- tiny-flux-schnell (by name only): the same without guidance embedding or shift, like FLUX.1-schnell

Full-size random-weight pipelines (real architectures) are in `dgate.full_size`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    MotionAdapter,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

logger = logging.getLogger(__name__)

# What `build_tiny_pipelines` (and `dgate tiny`) build by default.
TINY_PIPELINES: tuple[str, ...] = ("tiny-sd", "tiny-pixart", "tiny-sdxl", "tiny-sd3", "tiny-flux",
                                   "tiny-animatediff", "tiny-svd")
# Everything `build_tiny_pipeline` can build by name: the defaults plus the Flux "schnell" variant.
ALL_TINY_PIPELINES: tuple[str, ...] = (*TINY_PIPELINES, "tiny-flux-schnell")
# Dedicated inpainting models (they make no text-to-image): built by name only, with build_tiny_pipeline.
INPAINT_TINY_PIPELINES: tuple[str, ...] = ("tiny-sd-inpaint",)

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


def build_clip_tokenizer(pad_token: str = CLIP_EOS) -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer laid out like OpenAI's: bytes, bytes+</w>, merges, specials.

    `pad_token` is <|endoftext|> as in SD 1.x and every first CLIP tokenizer; SDXL's and SD3's second
    (OpenCLIP) tokenizer pads with "!", which is byte token 0 here as in the real vocabulary.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _learn_bpe_merges(WORDS.split())
    tokens += [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
    vocab: dict[str, int] = {}
    for tok in tokens:  # two merges can spell the same token; it gets one id
        vocab.setdefault(tok, len(vocab))
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not a single token of the vocabulary")
    # The 77-token window every SD text encoder has.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # transformers accepts pairs; its annotation says strings
        unk_token=CLIP_EOS,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=pad_token,
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


def _build_vae(
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    quant_convs: bool = True,
) -> AutoencoderKL:
    # Two levels -> a VAE scale factor of 2. SD 1.x/SDXL: 4 latent channels and quant convs; SD3 and
    # Flux: 16 channels, a shift as well as a scale, and no quant convs.
    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
    )


def _clip_text_encoder(
    tokenizer: CLIPTokenizer, seed: int = SEED, projection_dim: int | None = None, hidden_act: str = "quick_gelu"
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A 32-wide CLIP text encoder; with `projection_dim` the pooled output is projected (text_embeds)."""
    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        hidden_act=hidden_act,  # quick_gelu: OpenAI's CLIP-L; gelu: OpenCLIP's bigG (SDXL's/SD3's second)
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # CLIP pools the hidden state at the first eos
        pad_token_id=tokenizer.pad_token_id,
        **extra,  # type: ignore[arg-type]  # projection_dim, when given
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config) if projection_dim is None else CLIPTextModelWithProjection(config)


def _t5_encoder(tokenizer: T5Tokenizer, d_model: int = 32, seed: int = SEED) -> T5EncoderModel:
    """A 2-layer T5 v1.1 encoder (gated-gelu, as T5-XXL in PixArt, SD3 and Flux) of width `d_model`."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]  # a T5Config kwarg its stub omits
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def _sd_euler_scheduler() -> EulerDiscreteScheduler:
    # SD 1.5's and SDXL base 1.0's noise schedule (SDXL ships exactly this Euler config).
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )


def _sd_unet(layers_per_block: int, in_channels: int = 4) -> UNet2DConditionModel:
    """SD 1.5's UNet layout at 32/64 channels (seeded); 9 input channels: SD 1.5-inpainting's."""
    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=layers_per_block,
        # diffusers' fast-test layout: cross-attention only at the 16x16 level, because self-attention
        # over a 32x32 latent (SD's order) makes each step ~4x slower on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,  # diffusers' (misnamed) head count, as in SD 1.5
    )


def _build_sd() -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer)
    unet = _sd_unet(layers_per_block=2)
    # SD 1.5's noise schedule, with the Euler sampler most deployments use.
    return StableDiffusionPipeline(
        vae=_build_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_euler_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd_inpaint() -> StableDiffusionInpaintPipeline:
    """SD 1.5-inpainting's layout: the UNet takes the latents, the mask and the masked image's latents
    (4 + 1 + 4 channels) and predicts the latents' noise."""
    tokenizer = build_clip_tokenizer()
    return StableDiffusionInpaintPipeline(
        vae=_build_vae(),
        text_encoder=_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_sd_unet(layers_per_block=2, in_channels=9),
        scheduler=_sd_euler_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_pixart() -> PixArtSigmaPipeline:
    tokenizer = build_t5_tokenizer()
    text_encoder = _t5_encoder(tokenizer, d_model=32)
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


def _build_sdxl() -> StableDiffusionXLPipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")  # OpenCLIP's tokenizer pads with "!" (id 0)
    # SDXL takes the penultimate hidden states of both encoders, concatenated (32 + 32), and the
    # second one's projected pooled output (32) for the added "text_time" embedding.
    text_encoder = _clip_text_encoder(tokenizer, seed=SEED)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, seed=SEED + 1, projection_dim=32, hidden_act="gelu")
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(  # diffusers' SDXL fast-test UNet
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 size/crop conditioning numbers x addition_time_embed_dim + text_encoder_2's projection_dim
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=32 + 32,
    )
    return StableDiffusionXLPipeline(
        vae=_build_vae(scaling_factor=0.13025),  # SDXL's VAE scale
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_sd_euler_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_sd3() -> StableDiffusion3Pipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    tokenizer_3 = build_t5_tokenizer()
    # Two projected CLIPs (pooled 32 + 32 = pooled_projection_dim) and a T5 whose width (64) is the
    # joint attention width: SD3 zero-pads the concatenated CLIP hidden states (32 + 32) up to it.
    text_encoder = _clip_text_encoder(tokenizer, seed=SEED, projection_dim=32)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, seed=SEED + 1, projection_dim=32, hidden_act="gelu")
    text_encoder_3 = _t5_encoder(tokenizer_3, d_model=64, seed=SEED + 2)
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32,  # the default 64x64 image
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # = T5 d_model
        caption_projection_dim=32,  # = heads * head_dim
        pooled_projection_dim=64,  # = 32 + 32
        pos_embed_max_size=96,  # patches per side: up to 384x384 images
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),  # SD3-medium's
        vae=_build_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_convs=False),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(schnell: bool = False) -> FluxPipeline:
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, seed=SEED)  # Flux uses its pooled output only
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32, seed=SEED + 2)
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=32,  # = CLIP hidden size
        guidance_embeds=not schnell,  # dev is guidance-distilled; schnell is timestep-distilled
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    # FLUX.1-dev's scheduler shifts with the image size; FLUX.1-schnell's does not shift at all.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0 if schnell else 3.0,
        use_dynamic_shifting=not schnell,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_build_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant_convs=False),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_animatediff() -> AnimateDiffPipeline:
    """SD 1.5 + a motion adapter (UNetMotionModel, up to 32 frames), AnimateDiff's DDIM schedule."""
    tokenizer = build_clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer)
    unet = _sd_unet(layers_per_block=1)  # one layer per block: every frame runs through it
    motion_adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
                                   motion_num_attention_heads=4, motion_max_seq_length=32)
    # AnimateDiff's documented schedule: SD's betas, linear, DDIM without sample clipping.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                              timestep_spacing="linspace", steps_offset=1)
    return AnimateDiffPipeline(vae=_build_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=motion_adapter, scheduler=scheduler, feature_extractor=None,
                               image_encoder=None)


def _build_svd() -> StableVideoDiffusionPipeline:
    """Stable Video Diffusion's layout: a CLIP image encoder (224 px, as the pipeline resizes to), the
    spatio-temporal UNet (8 input channels: noise + image latents; fps, motion bucket and noise
    augmentation as added time ids), a temporal VAE decoder, SVD's continuous-time Karras Euler."""
    torch.manual_seed(SEED)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))
    torch.manual_seed(SEED)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=32,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(4, 8),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        num_frames=8,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                                       latent_channels=4)
    # SVD-XT's scheduler config.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_max=700.0,
        sigma_min=0.002, steps_offset=1, timestep_spacing="leading", timestep_type="continuous")
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224, do_normalize=True,
                                           image_mean=[0.48145466, 0.4578275, 0.40821073],
                                           image_std=[0.26862954, 0.26130258, 0.27577711])
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=feature_extractor)


_BUILDERS = {
    "tiny-sd": _build_sd,
    "tiny-pixart": _build_pixart,
    "tiny-sdxl": _build_sdxl,
    "tiny-sd3": _build_sd3,
    "tiny-flux": _build_flux,
    "tiny-animatediff": _build_animatediff,
    "tiny-svd": _build_svd,
    "tiny-flux-schnell": lambda: _build_flux(schnell=True),
    "tiny-sd-inpaint": _build_sd_inpaint,
}
assert tuple(_BUILDERS) == (*ALL_TINY_PIPELINES, *INPAINT_TINY_PIPELINES)


def build_tiny_pipeline(name: str, out_dir: Path) -> Path:
    """Build the tiny pipeline `name` (any of ALL_TINY_PIPELINES or INPAINT_TINY_PIPELINES), save it to
    `out_dir / name`, return that path."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline {name!r}; expected one of {', '.join(_BUILDERS)}")
    path = Path(out_dir) / name
    # Seed a forked RNG so building neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        pipe: Any = _BUILDERS[name]()  # a DiffusionPipeline; diffusers' annotations miss its methods
    pipe.save_pretrained(path, safe_serialization=True)
    for component, value in pipe.components.items():  # tokenizer, and tokenizer_2 where there is one
        if isinstance(value, CLIPTokenizer):
            _write_bpe_files(value, path / component)
    logger.info("built %s at %s", name, path)
    return path


def build_tiny_pipelines(out_dir: Path, names: tuple[str, ...] = TINY_PIPELINES) -> list[Path]:
    """Build the tiny pipelines `names` (by default TINY_PIPELINES) under `out_dir`."""
    return [build_tiny_pipeline(name, out_dir) for name in names]
