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
- tiny-animatediff, tiny-svd: AnimateDiffPipeline, StableVideoDiffusionPipeline
- tiny-sd-inpaint (by name only): SD 1.5-inpainting's 9-channel UNet

One module per family (`sd`, `pixart`, `sdxl`, `sd3`, `flux`, `video`), the shared seeded components
(`components`), the offline tokenizers (`tokenizers`) and the registry by name (`build`).
Full-size random-weight pipelines (real architectures) are in `dgate.full_size`.
"""

from dgate.tiny.build import (
    ALL_TINY_PIPELINES,
    INPAINT_TINY_PIPELINES,
    TINY_PIPELINES,
    build_tiny_pipeline,
    build_tiny_pipelines,
)
from dgate.tiny.components import SEED
from dgate.tiny.tokenizers import CLIP_BOS, CLIP_EOS, WORDS, build_clip_tokenizer, build_t5_tokenizer, write_bpe_files

# The name dgate.full_size imported before the split.
_write_bpe_files = write_bpe_files

__all__ = [
    "ALL_TINY_PIPELINES",
    "CLIP_BOS",
    "CLIP_EOS",
    "INPAINT_TINY_PIPELINES",
    "SEED",
    "TINY_PIPELINES",
    "WORDS",
    "build_clip_tokenizer",
    "build_t5_tokenizer",
    "build_tiny_pipeline",
    "build_tiny_pipelines",
    "write_bpe_files",
]
