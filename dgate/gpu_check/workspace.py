"""The models the check runs, under its work folder: tiny pipelines, each component saved the way an
engine loads it (the torch engine's `save_pretrained` folders, ONNX exports), random adapters, and the
engines as the image program's component call."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dgate.core.engines import ComponentEngine, load_engine
from dgate.core.families import family_of, spec_from_pipeline
from dgate.core.lora.request import LORA_DIR_ENV, AdapterRef, encode_adapters
from dgate.core.pipeline_spec import PipelineSpec
from dgate.gpu_check.environment import Environment

Arrays = dict[str, np.ndarray]
ComponentCall = Callable[[str, Arrays], Arrays]


def as_numpy(value: Any) -> np.ndarray:
    """A host array from an engine's output (numpy on the CPU, a torch tensor on a GPU)."""
    return value if isinstance(value, np.ndarray) else value.detach().float().cpu().numpy()


def engine_call(spec: PipelineSpec, engines: dict[str, ComponentEngine], lora: str = "") -> ComponentCall:
    """The engines as the image program's component call: named inputs in, named host arrays out."""
    family = family_of(spec)

    def call(component: str, inputs: Arrays) -> Arrays:
        _, outputs = family.component_io(spec, component)
        results = engines[component].run(inputs, lora)
        return {tensor.name: as_numpy(out) for tensor, out in zip(outputs, results, strict=True)}

    return call


def with_denoiser_precision(spec: PipelineSpec, precision: str) -> PipelineSpec:
    return replace(spec, precisions=spec.precisions | {spec.denoiser_component: precision})


@contextmanager
def adapters_directory(directory: Path) -> Iterator[None]:
    """Engines read adapters from DGATE_LORA_DIR when they load: the check's own folder, then put back."""
    previous = os.environ.get(LORA_DIR_ENV)
    os.environ[LORA_DIR_ENV] = str(directory)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LORA_DIR_ENV, None)
        else:
            os.environ[LORA_DIR_ENV] = previous


@dataclass
class TinyModel:
    name: str
    path: Path  # the diffusers folder
    pipe: Any  # the DiffusionPipeline on the CPU (text encoders, saving, weight maps)
    spec: PipelineSpec


class Workspace:
    def __init__(self, root: Path, environment: Environment) -> None:
        self.root = root
        self.environment = environment
        self.lora_dir = root / "loras"
        self._tiny: dict[str, TinyModel] = {}
        self._folders: dict[tuple[str, str, str], Path] = {}
        self._lora_maps: set[tuple[str, str]] = set()
        self._adapters: dict[str, tuple[str, str]] = {}

    def tiny(self, name: str) -> TinyModel:
        """The tiny pipeline `name`, built once into the work folder and loaded on the CPU."""
        if name not in self._tiny:
            from diffusers import DiffusionPipeline

            from dgate.tiny import build_tiny_pipeline

            path = build_tiny_pipeline(name, self.root / "models")
            pipe = DiffusionPipeline.from_pretrained(str(path))
            pipe.set_progress_bar_config(disable=True)
            self._tiny[name] = TinyModel(name, path, pipe, spec_from_pipeline(pipe, name))
        return self._tiny[name]

    def component_folder(self, model: TinyModel, engine: str, component: str) -> Path:
        """The model folder `engine` loads `component` from, written on first use."""
        key = (model.name, engine, component)
        if key not in self._folders:
            folder = self.root / "components" / engine / model.name / component
            if engine == "torch":
                from dgate.core.engines.torch_engine import save_torch_component

                for name, content in save_torch_component(model.pipe, model.spec, component, folder).items():
                    if isinstance(content, str):  # the manifest; the modules are saved already
                        (folder / name).write_text(content)
            elif engine == "onnxruntime":
                self._export_onnx(model, component, folder)
            elif engine == "tensorrt":
                self._build_plan(model, component, folder)
            else:
                raise ValueError(f"no in-process engine {engine!r}")
            self._folders[key] = folder
        return self._folders[key]

    def _export_onnx(self, model: TinyModel, component: str, folder: Path) -> dict[str, Path]:
        from dgate.core.component_modules import component_module
        from dgate.export.onnx_export import export_onnx
        from dgate.export.pipeline_export import trace_inputs

        with redirect_stdout(sys.stderr):  # the exporter's progress lines: stdout holds the table
            return export_onnx(component_module(model.pipe, model.spec, component), model.spec, component,
                               trace_inputs(model.spec, component), folder)

    def _build_plan(self, model: TinyModel, component: str, folder: Path) -> None:
        """The model folder `dgate export --engine tensorrt --device gpu` writes (`served_files`): the
        plan from the FP32 ONNX, the denoiser refittable for its LoRA map, with the map and base weights."""
        import shutil

        from dgate.core.lora.weight_map import build_lora_map
        from dgate.core.onnx_session import load_all_initializers
        from dgate.export.onnx_export import MODEL_FILE
        from dgate.export.pipeline_export import served_files
        from dgate.export.triton_config import ServingOptions

        scratch = folder.with_name(f"{folder.name}.scratch")
        files = self._export_onnx(model, component, scratch / "onnx")
        lora_map = (build_lora_map(getattr(model.pipe, component), load_all_initializers(files[MODEL_FILE]))
                    if component == model.spec.denoiser_component else None)
        options = ServingOptions(engine="tensorrt", device="gpu")
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in served_files(model.spec, component, options, files, lora_map, scratch).items():
            if isinstance(source, Path):
                shutil.move(source, folder / name)
            else:
                (folder / name).write_text(source)

    def _write_lora_map(self, model: TinyModel, component: str, folder: Path) -> None:
        """ONNX Runtime refits by initializer name: the map the export writes beside a LoRA model."""
        if (model.name, component) in self._lora_maps:
            return
        from dgate.core.lora.weight_map import LORA_MAP_FILE, build_lora_map
        from dgate.core.onnx_session import load_all_initializers
        from dgate.export.onnx_export import MODEL_FILE

        lora_map = build_lora_map(getattr(model.pipe, component), load_all_initializers(folder / MODEL_FILE))
        (folder / LORA_MAP_FILE).write_text(lora_map.to_json())
        self._lora_maps.add((model.name, component))

    def load(self, model: TinyModel, engine: str, component: str, spec: PipelineSpec | None = None,
             lora: bool = False) -> ComponentEngine:
        """`component` on `engine` at this machine's placement, as a served instance loads it."""
        folder = self.component_folder(model, engine, component)
        if lora and engine == "onnxruntime":
            self._write_lora_map(model, component, folder)
        with adapters_directory(self.lora_dir):
            return load_engine(engine, folder, spec or model.spec, component, self.environment.placement,
                               lora=lora)

    def adapters(self, model: TinyModel) -> tuple[str, str]:
        """Two random adapters on the denoiser of `model`, as the `lora` texts of requests."""
        if model.name not in self._adapters:
            from dgate.tiny_lora import random_lora

            texts = []
            for label, seed in (("a", 1), ("b", 2)):
                file = f"{model.name}-{label}.safetensors"
                random_lora(model.path, self.lora_dir / file, seed=seed, magnitude=2.0)
                texts.append(encode_adapters([AdapterRef(file, 1.0)]))
            self._adapters[model.name] = (texts[0], texts[1])
        return self._adapters[model.name]
