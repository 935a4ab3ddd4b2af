"""What `dgate calibrate` quantizes and how: a recipe, and the nvidia-modelopt config it becomes.

Torch-free, so the CLI can parse and check a recipe before it loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dgate.core.quantization import QUANTIZED_PRECISIONS

# Layers left in full precision by default: the ones whose quantization hurts diffusion models most
# for the least speed (the same set NVIDIA's diffusers quantization example skips): the input and
# output convolutions, time/text/pooled embeddings, skip convolutions and the final norm/projection.
DEFAULT_EXCLUDED = (
    "conv_in", "conv_out", "conv_shortcut", "time_embedding", "time_emb_proj", "add_embedding",
    "time_text_embed", "context_embedder", "x_embedder", "pos_embed", "norm_out", "proj_out",
    "adaln_single", "caption_projection",
)
# Layers without a GEMM are never quantized (modelopt registers LayerNorm, instance/batch norms and
# pooling, and would quantize their inputs): INT8/FP8 cannot speed them up and only add error.
# (GroupNorm, diffusers' RMSNorm and other norms have no quantized equivalent in modelopt.)
NON_GEMM_CLASSES = ("nn.LayerNorm", "nn.InstanceNorm2d", "nn.BatchNorm2d", "nn.AvgPool2d", "nn.MaxPool2d",
                    "nn.AdaptiveAvgPool2d")
DEFAULT_ALPHA = 0.8  # SmoothQuant migration strength (modelopt's default is 1.0); see calibration/README


def shipped_prompts() -> Path:
    """The calibration prompt file that ships with the package."""
    return Path(str(resources.files("dgate.calibration") / "prompts.txt"))


def read_prompts(path: Path, limit: int | None = None) -> list[str]:
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return prompts[:limit] if limit else prompts


@dataclass(frozen=True)
class CalibrationRecipe:
    precision: str  # "int8" (SmoothQuant) | "fp8" (E4M3, max calibration)
    alpha: float = DEFAULT_ALPHA
    excluded: tuple[str, ...] = DEFAULT_EXCLUDED  # module-name substrings kept in full precision
    steps: int | None = None  # denoising steps per calibration prompt (default: the pipeline's)
    guidance_scale: float | None = None
    size: int | None = None  # calibration image size (default: the pipeline's)
    seed: int = 0
    batch_size: int = 1  # prompts per pipeline call
    fused_adapters: tuple[tuple[Path, float], ...] = field(default_factory=tuple)  # --fuse-lora

    def __post_init__(self) -> None:
        if self.precision not in QUANTIZED_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(QUANTIZED_PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")

    @property
    def algorithm(self) -> str:
        # SmoothQuant moves activation outliers into the weights: what INT8 activations need. FP8's
        # dynamic range does without it.
        return "smoothquant" if self.precision == "int8" else "max"

    def modelopt_config(self) -> dict[str, Any]:
        """modelopt's `quant_cfg` list (later entries win): everything off, then weights and inputs of
        quantizable layers on, then the excluded patterns off again."""
        weights: dict[str, Any]
        inputs: dict[str, Any]
        if self.precision == "int8":
            weights, inputs = {"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}  # per-channel weights
        else:
            weights = inputs = {"num_bits": (4, 3), "axis": None}  # E4M3, per-tensor
        quant_cfg: list[dict[str, Any]] = [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": weights},
            {"quantizer_name": "*input_quantizer", "cfg": inputs},
        ]
        quant_cfg += [{"quantizer_name": "*", "parent_class": cls, "enable": False} for cls in NON_GEMM_CLASSES]
        quant_cfg += [{"quantizer_name": f"*{pattern}*", "enable": False} for pattern in self.excluded]
        algorithm: dict[str, Any] | str = ({"method": "smoothquant", "alpha": self.alpha}
                                            if self.algorithm == "smoothquant" else "max")
        return {"quant_cfg": quant_cfg, "algorithm": algorithm}
