"""Component engines in process: the torch engine saved and loaded back as `dgate export --engine torch`
writes it, at parity with diffusers, and LoRA refit on its parameters (A -> B -> A exact)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from dgate.core.engines import Placement, load_engine
from dgate.core.engines.torch_engine import TorchEngine, save_torch_component
from dgate.core.families import family_of, spec_from_pipeline
from dgate.core.generate import image_program
from dgate.core.lora.refit import TorchWeightRefitter, WeightRefitter
from dgate.core.lora.request import AdapterRef, adapters_dir, encode_adapters
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.program import run_blocking
from dgate.core.schedulers import SchedulerFactory
from dgate.reference import diffusers_images, loaded_adapters, torch_text_outputs
from dgate.tiny_lora import random_lora

CPU = Placement()


@pytest.fixture(scope="module")
def pipe(tiny_models: dict[str, Path]) -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(str(tiny_models["tiny-sd"]))


@pytest.fixture(scope="module")
def spec(pipe: DiffusionPipeline) -> PipelineSpec:
    return spec_from_pipeline(pipe, "tiny-sd")


@pytest.fixture(scope="module")
def saved(pipe: DiffusionPipeline, spec: PipelineSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each component saved as the export writes it, in its own model folder."""
    root = tmp_path_factory.mktemp("torch-components")
    folders = {}
    for component in spec.exported_components:
        folder = root / component
        for name, content in save_torch_component(pipe, spec, component, folder).items():
            if isinstance(content, str):
                (folder / name).write_text(content)
        folders[component] = folder
    return folders


def _engine_call(spec: PipelineSpec, engines: dict[str, TorchEngine], lora: str = ""):
    def call(component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, outputs = family_of(spec).component_io(spec, component)
        return {t.name: out for t, out in zip(outputs, engines[component].run(inputs, lora), strict=True)}
    return call


VALUES = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "num_images": 2, "num_inference_steps": 3,
          "guidance_scale": 4.0, "seed": 11, "height": 48, "width": 64, "scheduler": "euler_a",
          "max_sequence_length": 0, "true_cfg_scale": 1.0}


def _images(pipe: DiffusionPipeline, spec: PipelineSpec, engines: dict[str, TorchEngine], lora: str = "") -> np.ndarray:
    params = DenoiseParams(**{k: VALUES[k] for k in DenoiseParams.__dataclass_fields__ if k in VALUES})
    text = torch_text_outputs(pipe, spec, VALUES["prompt"], params.negative_prompt)
    program = image_program(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), text)
    return run_blocking(program, _engine_call(spec, engines, lora))


def test_the_onnxruntime_engine_keeps_torch_out_of_component_processes() -> None:
    """A repository holds dozens of component processes: torch would cost each ~250 MB."""
    code = ("import sys, dgate.core.engines.onnxruntime_engine, dgate.core.lora.serving; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_torch_engine_loaded_from_its_saved_files_equals_diffusers(pipe: DiffusionPipeline, spec: PipelineSpec,
                                                                   saved: dict[str, Path]) -> None:
    engines = {c: load_engine("torch", saved[c], spec, c, CPU) for c in ("unet", "vae_decoder")}
    served = _images(pipe, spec, engines)  # type: ignore[arg-type]
    expected = diffusers_images(pipe, VALUES)
    assert expected.std() > 5
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_torch_text_encoder_engine_equals_the_exported_wrapper(pipe: DiffusionPipeline, spec: PipelineSpec,
                                                               saved: dict[str, Path]) -> None:
    from dgate.core.component_modules import component_module

    engine = load_engine("torch", saved["text_encoder"], spec, "text_encoder", CPU)
    ids = np.random.default_rng(0).integers(0, 1000, (2, 77)).astype(np.int64)
    with torch.inference_mode():
        expected = component_module(pipe, spec, "text_encoder")(torch.from_numpy(ids))
    for got, want in zip(engine.run({"input_ids": ids}), expected, strict=True):
        np.testing.assert_array_equal(got, want.numpy())


def test_torch_engine_lora_refit_matches_diffusers_and_switches_exactly(
        pipe: DiffusionPipeline, spec: PipelineSpec, saved: dict[str, Path], tiny_models: dict[str, Path]) -> None:
    directory = adapters_dir()
    for name, seed in (("engine-a", 1), ("engine-b", 2)):
        random_lora(tiny_models["tiny-sd"], directory / f"{name}.safetensors", seed=seed, magnitude=2.0)
    a = encode_adapters([AdapterRef("engine-a.safetensors", 1.0)])
    b = encode_adapters([AdapterRef("engine-b.safetensors", 1.0)])
    engines = {"unet": load_engine("torch", saved["unet"], spec, "unet", CPU, lora=True),
               "vae_decoder": load_engine("torch", saved["vae_decoder"], spec, "vae_decoder", CPU)}
    base = _images(pipe, spec, engines)  # type: ignore[arg-type]
    with_a = _images(pipe, spec, engines, a)  # type: ignore[arg-type]
    assert np.abs(with_a.astype(int) - base.astype(int)).max() > 10, "the adapter must change the image"
    # diffusers with the same adapter on the UNet only (the text comes from the base encoder here)
    with loaded_adapters(pipe, encode_adapters([AdapterRef("engine-a.safetensors", 1.0, "unet")])):
        expected = diffusers_images(pipe, VALUES)
    assert np.abs(with_a.astype(int) - expected.astype(int)).max() <= 1
    _images(pipe, spec, engines, b)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_images(pipe, spec, engines, a), with_a)  # type: ignore[arg-type]
    np.testing.assert_array_equal(_images(pipe, spec, engines), base)  # type: ignore[arg-type]


def test_torch_refitter_keeps_the_numpy_refitters_bookkeeping() -> None:
    rng = np.random.default_rng(0)
    base = {"w1": rng.standard_normal((8, 4)).astype(np.float32), "w2": rng.standard_normal((3, 3)).astype(np.float16)}
    deltas_a = {"w1": rng.standard_normal((8, 4)).astype(np.float32)}
    deltas_b = {"w2": rng.standard_normal((3, 3)).astype(np.float32)}
    live_np = {k: v.copy() for k, v in base.items()}
    live_t = {k: torch.from_numpy(v.copy()) for k, v in base.items()}
    numpy_refit, torch_refit = WeightRefitter(live_np), TorchWeightRefitter(live_t)
    as_torch = [{k: torch.from_numpy(v) for k, v in deltas.items()} for deltas in (deltas_a, deltas_b)]
    for key, np_sets, t_sets in (("a", [(deltas_a, 0.8)], [(as_torch[0], 0.8)]),
                                 ("b", [(deltas_b, 1.0)], [(as_torch[1], 1.0)]),
                                 ("ab", [(deltas_a, 0.8), (deltas_b, 0.5)], [(as_torch[0], 0.8), (as_torch[1], 0.5)])):
        assert numpy_refit.apply(key, np_sets) == torch_refit.apply(key, t_sets)
        for name in base:
            np.testing.assert_allclose(live_t[name].numpy(), live_np[name], rtol=1e-3, atol=1e-3)
    torch_refit.apply((), [])
    for name in base:
        assert live_t[name].numpy().tobytes() == base[name].tobytes()


def test_an_unknown_engine_is_refused_with_the_ones_that_run(spec: PipelineSpec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="onnxruntime, torch, tensorrt"):
        load_engine("openvino", tmp_path, spec, "unet", CPU)
    with pytest.raises(ValueError, match="TensorRT plans run on GPU instances only"):
        load_engine("tensorrt", tmp_path, spec, "unet", CPU)


def test_the_program_keeps_tensor_answers_as_a_gpu_engine_returns_them(pipe: DiffusionPipeline, spec: PipelineSpec,
                                                                       saved: dict[str, Path]) -> None:
    """The core is device-agnostic: answers as torch tensors (a GPU engine's, by DLPack) give the same
    image as numpy answers, and the program sends tensors, not host copies, to the denoiser."""
    engines = {c: load_engine("torch", saved[c], spec, c, CPU) for c in ("unet", "vae_decoder")}
    seen: list[type] = []

    def tensors(component: str, inputs: dict) -> dict:
        seen.extend(type(value) for value in inputs.values())
        _, outputs = family_of(spec).component_io(spec, component)
        return {t.name: torch.from_numpy(out) for t, out in zip(outputs, engines[component].run(inputs), strict=True)}

    params = DenoiseParams(**{k: VALUES[k] for k in DenoiseParams.__dataclass_fields__ if k in VALUES})
    text = torch_text_outputs(pipe, spec, VALUES["prompt"], params.negative_prompt)
    served = run_blocking(image_program(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), text,
                                        device="cpu"), tensors)
    np.testing.assert_array_equal(served, _images(pipe, spec, engines))  # type: ignore[arg-type]
    assert set(seen) == {torch.Tensor}


def test_uint8_images_are_the_same_bytes_from_numpy_and_torch() -> None:
    from dgate.core.images import to_uint8_images

    decoded = np.random.default_rng(0).uniform(-1.2, 1.2, (2, 3, 16, 24)).astype(np.float32)
    decoded[0, 0, 0, :4] = [-0.5 / 255 * 2, 0.5, 1 / 255, 2 / 255 - 1]  # rounding ties and clamps
    np.testing.assert_array_equal(to_uint8_images(torch.from_numpy(decoded)), to_uint8_images(decoded))
