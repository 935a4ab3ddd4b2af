"""The LoRA adapters: attaching them with peft (diffusers' and transformers' peft integrations) and
writing them as the one `.safetensors` file `pipe.load_lora_weights(path)` reads."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from dgate.finetune.config import TrainConfig
from dgate.finetune.files import make_readable
from dgate.finetune.pipeline import text_encoders

ADAPTER = "default"


def add_adapters(pipe: Any, family: str, config: TrainConfig) -> dict[str, torch.nn.Module]:
    """Add a LoRA adapter to the UNet (and the text encoders with `train_text_encoder`); return the
    adapted modules by their component name. Only the LoRA parameters are left trainable."""
    from peft import LoraConfig

    modules: dict[str, torch.nn.Module] = {"unet": pipe.unet}
    if config.train_text_encoder:
        names = ["text_encoder"] if family == "sd" else ["text_encoder", "text_encoder_2"]
        modules.update(zip(names, text_encoders(pipe, family), strict=True))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    for name, module in modules.items():
        targets = config.target_modules if name == "unet" else config.text_encoder_target_modules
        # Gaussian A and zero B (diffusers' choice for the UNet): the adapted model starts as the base.
        lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          init_lora_weights="gaussian", target_modules=list(targets))
        try:
            module.add_adapter(lora)  # type: ignore[operator]  # diffusers' and transformers' PeftAdapterMixin
        except ValueError as error:  # peft: none of the target modules exist in this model
            raise ValueError(f"{name}: cannot place LoRA on {list(targets)}: {error}") from error
    return modules


def trainable_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters by a name unique across components (the checkpoint's keys)."""
    return {f"{component}.{name}": parameter for component, module in modules.items()
            for name, parameter in module.named_parameters() if parameter.requires_grad}


def lora_layers(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Each component's LoRA state dict in peft's key format (no adapter name), which load_lora_weights reads."""
    from peft.utils import get_peft_model_state_dict

    return {name: {key: value.detach().to(torch.float32).contiguous().cpu()
                   for key, value in get_peft_model_state_dict(module).items()}
            for name, module in modules.items()}


def save_lora_file(pipe: Any, modules: dict[str, torch.nn.Module], output: Path) -> Path:
    """Write the adapters to `output` with the pipeline class's own save_lora_weights, atomically: into
    a temporary folder beside it, then os.replace, so a reader never sees half a file. Each component's
    LoraConfig goes into the file's metadata, so lora_alpha (and rank) survive loading."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    layers = lora_layers(modules)
    metadata = {name: module.peft_config[ADAPTER].to_dict() for name, module in modules.items()}  # type: ignore[index,union-attr]
    kwargs: dict[str, Any] = {}
    for name in modules:
        kwargs[f"{name}_lora_layers"] = layers[name]
        kwargs[f"{name}_lora_adapter_metadata"] = metadata[name]
    staging = Path(tempfile.mkdtemp(prefix=f".{output.stem}.", dir=output.parent))
    try:
        type(pipe).save_lora_weights(str(staging), weight_name=output.name, safe_serialization=True, **kwargs)
        make_readable(staging / output.name)
        os.replace(staging / output.name, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
