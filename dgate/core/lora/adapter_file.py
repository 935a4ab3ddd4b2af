"""Read a LoRA `.safetensors` (diffusers/peft or kohya layout) into low-rank factors per layer.

diffusers does the format work: the pipeline class's own `lora_state_dict` converts kohya and old
diffusers keys, and its `_create_lora_config` derives rank and alpha per layer exactly as
`load_lora_weights` does, so a served adapter scales every layer the way diffusers would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.lora.request import ADAPTER_SUFFIX, LoraError, resolve_adapter
from dgate.core.pipeline_spec import PipelineSpec

LORA_DOWN, LORA_UP = ".lora_A.weight", ".lora_B.weight"
TEXT_MODEL_PREFIX = "text_model."


def strip_text_model(name: str) -> str:
    """CLIP layer names as recent transformers flatten them (older checkpoints say `text_model.`)."""
    return name.removeprefix(TEXT_MODEL_PREFIX)


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: W' = W + scale * up @ down (convolutions flattened to matrices)."""

    down: np.ndarray  # lora_A: [rank, in, *kernel]
    up: np.ndarray  # lora_B: [out, rank, 1, 1] or [out, rank]
    scale: float  # alpha / rank (alpha / sqrt(rank) for rsLoRA)

    def delta(self) -> np.ndarray:
        """The weight change in PyTorch's layout, [out, in, *kernel], float32."""
        rank = self.down.shape[0]
        up = self.up.reshape(self.up.shape[0], rank).astype(np.float32)
        down = self.down.reshape(rank, -1).astype(np.float32)
        return (np.float32(self.scale) * (up @ down)).reshape(up.shape[0], *self.down.shape[1:])


# component ("unet", "text_encoder", ...) -> layer name in that module -> factors
AdapterLayers = dict[str, dict[str, LoraLayer]]


def adapter_file(path: Path) -> Path:
    """The weights file of an adapter: the file itself, or the one .safetensors in a diffusers folder."""
    if path.is_dir():
        files = sorted(path.glob(f"*{ADAPTER_SUFFIX}"))
        if len(files) != 1:
            raise LoraError(f"adapter folder {path.name!r} must hold exactly one {ADAPTER_SUFFIX} file, "
                            f"found {len(files)}")
        return files[0]
    return path


def _raw_state_dict(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise LoraError(f"{path.name} is not a readable safetensors file ({error})") from error
    metadata = json.loads(header["lora_adapter_metadata"]) if "lora_adapter_metadata" in header else None
    return state, metadata


def _diffusers_state_dict(path: Path, pipeline_class: str
                          ) -> tuple[dict[str, Any], dict[str, float] | None, dict[str, Any] | None]:
    """(state dict with component prefixes, network alphas, peft metadata) as diffusers reads them."""
    state, metadata = _raw_state_dict(path)  # also proves the file is safetensors
    import diffusers

    loader = getattr(diffusers, pipeline_class, None)
    if loader is None or not hasattr(loader, "lora_state_dict"):
        return state, None, metadata  # no LoRA loader for this pipeline (PixArt): peft keys as saved
    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    if pipeline_class == "FluxPipeline":
        kwargs["return_alphas"] = True
    try:
        out = loader.lora_state_dict(state, **kwargs)
    except Exception as error:  # diffusers' converters raise ValueError/KeyError on unknown layouts
        raise LoraError(f"{path.name}: not a LoRA layout diffusers' {pipeline_class} reads ({error})") from error
    if len(out) == 3:
        return out[0], out[1], out[2] or metadata
    return out[0], None, out[1] or metadata


def _component_layers(state: dict[str, Any], alphas: dict[str, float] | None, metadata: dict[str, Any] | None,
                      component: str, is_denoiser: bool) -> dict[str, LoraLayer]:
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    prefix = f"{component}."
    own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    own_alphas = {k.removeprefix(prefix): v for k, v in (alphas or {}).items() if k.startswith(prefix)} or None
    own_metadata = {k.removeprefix(prefix): v for k, v in (metadata or {}).items() if k.startswith(prefix)} or None
    if not own:
        return {}
    # The same conversions diffusers' load_lora_into_unet / _load_lora_into_text_encoder apply.
    if is_denoiser:
        if not any("lora_A" in k for k in own):
            own = convert_unet_state_dict_to_peft(own)
    else:
        own = convert_state_dict_to_peft(convert_state_dict_to_diffusers(own))
        # Checkpoints name CLIP's layers with or without `text_model.`; maps are written without.
        own = {strip_text_model(k): v for k, v in own.items()}
    unsupported = sorted(k for k in own if not (k.endswith(LORA_DOWN) or k.endswith(LORA_UP)))
    if unsupported:
        raise LoraError(f"{component}: only plain LoRA (lora_A/lora_B) is served; unsupported keys such as "
                        f"{unsupported[:3]} (DoRA, LoRA bias, LoKr ...)")
    ranks = {f"^{k}": v.shape[1] for k, v in own.items() if k.endswith(LORA_UP) and v.ndim > 1}
    if not ranks:
        return {}
    config = _create_lora_config(own, own_alphas, own_metadata, ranks, is_unet=is_denoiser)
    if config.use_dora:
        raise LoraError(f"{component}: DoRA adapters are not served")
    layers = {}
    for key, down in own.items():
        if not key.endswith(LORA_DOWN):
            continue
        name = key.removesuffix(LORA_DOWN)
        up = own.get(name + LORA_UP)
        if up is None:
            raise LoraError(f"{component}: layer {name} has lora_A but no lora_B")
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha)
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        layers[name] = LoraLayer(down.float().numpy(), up.float().numpy(), float(scale))
    return layers


def read_adapter(path: Path, pipeline_class: str, components: Sequence[str], denoiser_component: str
                 ) -> AdapterLayers:
    """The adapter at `path` split by component; LoraError for keys that belong to none of them."""
    file = adapter_file(path)
    state, alphas, metadata = _diffusers_state_dict(file, pipeline_class)
    stray = sorted(k for k in state if not any(k.startswith(f"{c}.") for c in components))
    if stray:
        raise LoraError(f"{file.name}: keys match no layer of this pipeline (components {', '.join(components)}), "
                        f"e.g. {stray[:3]}")
    layers = {c: _component_layers(state, alphas, metadata, c, c == denoiser_component) for c in components}
    layers = {c: found for c, found in layers.items() if found}
    if not layers:
        raise LoraError(f"{file.name} holds no LoRA layers")
    return layers


def lora_components(spec: PipelineSpec) -> tuple[str, ...]:
    """The components an adapter may change: every text encoder and the denoiser."""
    return (*(e.component for e in spec.text_encoders), spec.denoiser_component)


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file as found on disk; a rewritten file is a new key (its cache entry goes stale)."""

    path: Path
    mtime_ns: int
    size: int

    @classmethod
    def find(cls, directory: Path, path: str) -> AdapterFile:
        """`path` as a request names it: relative to `directory`, or absolute under an adapter root."""
        found = resolve_adapter(directory, path)
        stat = found.stat()
        return cls(found, stat.st_mtime_ns, stat.st_size)
