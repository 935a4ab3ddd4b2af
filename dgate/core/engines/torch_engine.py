"""PyTorch as a component engine: the pipeline's own modules, wrapped exactly as for ONNX export.

No export step beyond `save_pretrained`: `dgate export --engine torch` saves the pipeline modules a
component needs (the UNet, both VAE halves' `vae`, a text encoder...) into the model's version folder
with a manifest naming their classes, and this engine loads them back on the instance's device —
in the spec's precision on a GPU (FP16 where the spec says so), FP32 on the CPU. It serves
architectures whose ONNX export is hard and is the GPU path that needs no engine build.

LoRA is a refit of the module's own parameters in place (`TorchWeightRefitter`): the same
bookkeeping as ONNX Runtime's (A -> B -> A exact, base restored bitwise), with every adapter's
deltas moved to the device once, when it is first read.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from dgate.core.engines import Placement
from dgate.core.families import family_of
from dgate.core.lora.adapter_file import strip_text_model
from dgate.core.lora.deltas import Deltas
from dgate.core.lora.refit import TorchWeightRefitter
from dgate.core.lora.serving import AdapterSets
from dgate.core.lora.weight_map import LoraMap, MappedWeight
from dgate.core.pipeline_spec import PipelineSpec

MANIFEST_FILE = "torch_modules.json"


def pipeline_modules(spec: PipelineSpec, component: str) -> tuple[str, ...]:
    """The pipeline attributes a component's wrapper reads (dgate.core.component_modules.component_module)."""
    if component in ("vae_decoder", "vae_encoder"):
        return ("vae",)
    if component == "image_encoder":
        return ("image_encoder", "feature_extractor")
    return (component,)  # the denoiser (unet/transformer) and text encoders are pipeline attributes


def save_torch_component(pipe: Any, spec: PipelineSpec, component: str, directory: Path) -> dict[str, Path | str]:
    """Save what the torch engine loads for `component` into `directory`: files for write_model."""
    manifest = {}
    for attribute in pipeline_modules(spec, component):
        module = getattr(pipe, attribute)
        module.save_pretrained(directory / attribute)
        manifest[attribute] = [type(module).__module__.split(".")[0], type(module).__name__]
    files: dict[str, Path | str] = {attribute: directory / attribute for attribute in manifest}
    return files | {MANIFEST_FILE: json.dumps({"modules": manifest}, indent=1)}


def load_pipeline_modules(model_dir: Path) -> dict[str, Any]:
    """The modules `save_torch_component` saved, loaded with their own classes (diffusers/transformers)."""
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())["modules"]
    modules = {}
    for attribute, (library, class_name) in manifest.items():
        cls = getattr(importlib.import_module(library), class_name)
        modules[attribute] = cls.from_pretrained(model_dir / attribute)
    return modules


def lora_map_of(module: nn.Module) -> LoraMap:
    """Every Linear/Conv layer of `module` -> its own parameter: the names adapters use, untransposed."""
    layers = {
        strip_text_model(name): MappedWeight(f"{name}.weight", False, tuple(child.weight.shape))
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear | nn.Conv1d | nn.Conv2d)
    }
    return LoraMap(layers)


def arrays_on(device: torch.device) -> Callable[[Deltas], Deltas]:
    """An `AdapterSets.prepare` that moves an adapter's arrays (FP32) to `device`, once per adapter."""

    def prepare(deltas: Deltas) -> Deltas:
        moved: dict[str, Any] = {name: torch.from_numpy(np.asarray(delta, np.float32)).to(device)
                                 for name, delta in deltas.items()}
        return moved

    return prepare


class TorchEngine:
    def __init__(self, module: nn.Module, input_names: list[str], placement: Placement,
                 dtype: torch.dtype = torch.float32, adapters: AdapterSets | None = None,
                 lora_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.placement = placement
        self.device = torch.device(placement.torch_device)
        self.dtype = dtype
        self.module = module.to(self.device, dtype).eval()
        self.input_names = input_names
        self.adapters = adapters
        # Taken after the move: the parameters the module computes with, on its device.
        self.refitter = TorchWeightRefitter(lora_weights or {}) if adapters is not None else None

    @classmethod
    def load(cls, model_dir: Path, spec: PipelineSpec, component: str, placement: Placement,
             threads: int = 0, lora: bool = False) -> TorchEngine:
        if threads > 0:
            torch.set_num_threads(threads)
        modules = load_pipeline_modules(model_dir)
        return cls.from_modules(SimpleNamespace(**modules), spec, component, placement, lora)

    @classmethod
    def from_modules(cls, pipe: Any, spec: PipelineSpec, component: str, placement: Placement,
                     lora: bool = False) -> TorchEngine:
        """Over a loaded pipeline (or any object with its module attributes), as `load` does from disk."""
        from dgate.core.component_modules import component_module

        module = component_module(pipe, spec, component)
        # FP16 where the spec says so, on a GPU only: CPU kernels for half precision are slow or missing.
        dtype = torch.float16 if placement.on_gpu and spec.precision(component) == "fp16" else torch.float32
        inputs, _ = family_of(spec).component_io(spec, component)
        engine = cls(module, [tensor.name for tensor in inputs], placement, dtype)
        if lora:
            raw = getattr(pipe, component)  # the module adapters name their layers after
            lora_map = lora_map_of(raw)
            engine.adapters = AdapterSets(spec, component, lora_map, prepare=arrays_on(engine.device))
            engine.refitter = TorchWeightRefitter({mapped.initializer: raw.get_parameter(mapped.initializer).data
                                                   for mapped in lora_map.layers.values()})
        return engine

    def _tensor(self, value: Any) -> torch.Tensor:
        tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        tensor = tensor.to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _apply(self, lora: str) -> None:
        if self.adapters is None or self.refitter is None:
            return
        key, adapters = self.adapters.resolve(lora) if lora else ((), [])
        with torch.no_grad():
            self.refitter.apply(key, adapters)

    def run(self, inputs: dict[str, Any], lora: str = "") -> list[Any]:
        self._apply(lora)
        with torch.inference_mode():
            result = self.module(*(self._tensor(inputs[name]) for name in self.input_names))
        outputs = result if isinstance(result, tuple | list) else (result,)
        if self.placement.on_gpu:
            return [output.float() for output in outputs]
        return [output.float().numpy() for output in outputs]
