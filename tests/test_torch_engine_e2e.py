"""The torch engine served end to end: `dgate export --engine torch` (the pipeline's own PyTorch
modules in the Python backend, no ONNX) through a real tritonserver, tritonclient and the frontend
with the official openai client, at parity with diffusers, and LoRA refit on its parameters."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import TORCH_ENGINE_PIPELINES
from openai import OpenAI
from PIL import Image
from triton_requests import ensemble_inputs, reference_images

from dgate.core.lora.request import AdapterRef, encode_adapters
from dgate.tiny_lora import random_lora

MODEL = next(iter(TORCH_ENGINE_PIPELINES))
FAST = {"num_inference_steps": 3}
# PyTorch on both sides (FP32): the only difference is D-Gate's loop against diffusers' own.
MAX_PIXEL_DIFFERENCE = 1


@pytest.fixture(scope="module")
def grpc(triton: Any) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(triton.ports.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def torch_adapter(tiny_models: dict[str, Path]) -> str:
    directory = Path(os.environ["DGATE_LORA_DIR"])
    random_lora(tiny_models["tiny-sd"], directory / "torch-engine.safetensors", seed=21, text_encoder=True)
    random_lora(tiny_models["tiny-sd"], directory / "torch-engine-b.safetensors", seed=22)
    return encode_adapters([AdapterRef("torch-engine.safetensors", 0.9)])


def generate(client: Any, **overrides: Any) -> np.ndarray:
    """Through the async (streaming) ensemble, the one `dgate export` writes by default."""
    results: list[Any] = []
    client.start_stream(callback=lambda result, error: results.append(error or result))
    client.async_stream_infer(MODEL, ensemble_inputs(grpcclient, **(FAST | overrides)))
    client.stop_stream()
    for result in results:
        if isinstance(result, Exception):
            raise result
        images = result.as_numpy("images")
        if images is not None:
            return images
    raise AssertionError("no images in the stream")


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_torch_engine_components_have_no_onnx(model_repository: Path) -> None:
    version = model_repository / f"{MODEL}_unet" / "1"
    assert (version / "torch_modules.json").is_file() and not list(version.glob("*.onnx"))
    assert (version / "lora_map.json").is_file()  # what dgate_lora checks adapters against
    assert 'string_value: "torch"' in (model_repository / f"{MODEL}_unet" / "config.pbtxt").read_text()


def test_served_torch_engine_equals_diffusers(grpc: Any, tiny_models: dict[str, Path]) -> None:
    served = generate(grpc, num_images=2, seed=5)
    expected = reference_images(tiny_models[TORCH_ENGINE_PIPELINES[MODEL]], num_images=2, seed=5, **FAST)
    assert expected.std() > 5
    assert max_difference(served, expected) <= MAX_PIXEL_DIFFERENCE


def test_lora_on_the_torch_engine_matches_diffusers_and_switches_exactly(
        grpc: Any, torch_adapter: str, tiny_models: dict[str, Path]) -> None:
    base = generate(grpc)
    with_a = generate(grpc, lora=torch_adapter)
    expected = reference_images(tiny_models[TORCH_ENGINE_PIPELINES[MODEL]], lora=torch_adapter, **FAST)
    assert max_difference(with_a, expected) <= 2  # the LoRA bound (peft layers vs refit weights)
    assert max_difference(with_a, base) > 8, "the adapter must change the image"
    generate(grpc, lora=encode_adapters([AdapterRef("torch-engine-b.safetensors", 1.0)]))
    assert np.array_equal(generate(grpc, lora=torch_adapter), with_a)  # A -> B -> A is A exactly
    assert np.array_equal(generate(grpc), base)


def test_the_openai_client_gets_the_torch_engines_image(client: OpenAI, tiny_models: dict[str, Path]) -> None:
    response = client.images.generate(prompt="a red fox in the snow", model=MODEL, size="64x64",
                                      extra_body={"seed": 3, "guidance_scale": 7.5, **FAST})
    assert response.data is not None and response.data[0].b64_json is not None
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))))[None]
    expected = reference_images(tiny_models[TORCH_ENGINE_PIPELINES[MODEL]], seed=3, **FAST)
    assert max_difference(served, expected) <= MAX_PIXEL_DIFFERENCE
