"""Quantized pipelines end to end: `dgate calibrate` → `dgate export --quantized` → tritonserver → the
OpenAI frontend, beside the FP32 pipeline they came from.

Bounds (measured, tiny-sd, 64x64, 4 steps, 8 calibration prompts): the INT8 image stays within
PSNR 46-48 dB and 5-6/255 of the FP32 one; the tests allow PSNR >= 38 dB and 24/255.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from openai import OpenAI
from PIL import Image
from triton_requests import ensemble_inputs, reference_images

from dgate.core.lora.request import AdapterRef, encode_adapters

MIN_PSNR_DB = 38.0
MAX_PIXEL_DIFFERENCE = 24
PROMPTS = ("a red fox in the snow", "a lighthouse in a storm", "a bowl of ramen")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def grpc(triton: Any) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(triton.ports.grpc_url)
    yield client
    client.close()


def generate(client: Any, model: str, **overrides: Any) -> np.ndarray:
    return client.infer(model, ensemble_inputs(grpcclient, **overrides)).as_numpy("images")


def test_int8_pipeline_serves_images_close_to_fp32(grpc: Any, quantized_models: dict[str, Path]) -> None:
    assert (quantized_models["tiny-sd-int8"] / "unet" / "model.onnx").is_file()  # export copied, not moved
    for seed, prompt in enumerate(PROMPTS):
        fp32 = generate(grpc, "tiny-sd", prompt=prompt, seed=seed)
        int8 = generate(grpc, "tiny-sd-int8", prompt=prompt, seed=seed)
        assert psnr(int8, fp32) >= MIN_PSNR_DB and max_difference(int8, fp32) <= MAX_PIXEL_DIFFERENCE, prompt
        assert max_difference(int8, fp32) > 0, "the INT8 UNet must be the one serving"


# `frontend` and `client`: the shared fixtures of frontend_fixtures, on the session's tritonserver.


def test_models_report_their_precision(client: OpenAI) -> None:
    assert client.models.retrieve("tiny-sd-int8").model_extra["precision"] == "int8"  # type: ignore[index]
    assert client.models.retrieve("tiny-sd").model_extra["precision"] == "fp32"  # type: ignore[index]


def test_a_lora_request_on_a_quantized_pipeline_is_a_400(client: OpenAI, tiny_models: dict[str, Path]) -> None:
    from dgate.tiny_lora import random_lora

    random_lora(tiny_models["tiny-sd"], Path(os.environ["DGATE_LORA_DIR"]) / "for-int8.safetensors", seed=12)
    with pytest.raises(openai.BadRequestError, match=r"tiny-sd-int8 is quantized \(int8\).*--fuse-lora") as raised:
        client.images.generate(model="tiny-sd-int8", prompt="a fox", size="64x64",
                               extra_body={"lora": "for-int8", "num_inference_steps": 2})
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    served = client.images.generate(model="tiny-sd", prompt="a fox", size="64x64",
                                    extra_body={"lora": "for-int8", "num_inference_steps": 2})
    assert served.data[0].b64_json  # the FP32 pipeline takes the same adapter


# --- an adapter fused before calibration --------------------------------------------------------------


FUSED_ADAPTER, FUSED_SCALE = "fused.safetensors", 0.8


@pytest.fixture(scope="module")
def fused_triton(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """tiny-sd calibrated with a UNet + text-encoder adapter fused at 0.8, served by its own tritonserver."""
    from dgate.calibration.calibrate import calibrate
    from dgate.calibration.recipe import CalibrationRecipe, read_prompts, shipped_prompts
    from dgate.export.pipeline_export import export_pipeline
    from dgate.export.triton_config import ServingOptions
    from dgate.tiny_lora import random_lora
    from dgate.triton_server import TritonServer, free_ports

    model = tiny_models["tiny-sd"]
    adapter = random_lora(model, Path(os.environ["DGATE_LORA_DIR"]) / FUSED_ADAPTER, seed=11, text_encoder=True)
    root = tmp_path_factory.mktemp("fused")
    recipe = CalibrationRecipe("int8", steps=4, fused_adapters=((adapter, FUSED_SCALE),))
    result = calibrate(str(model), root / "quant", recipe, read_prompts(shipped_prompts(), 8))
    assert result.quantization.fused_components == ("text_encoder",)
    options = ServingOptions(denoiser="blocking", onnx_threads=2)  # called with plain gRPC infer below
    export_pipeline(str(model), root / "repository", name="tiny-sd-int8-fused", options=options, quantized=result.out)
    server = TritonServer(root / "repository", free_ports(), log_path=root / "tritonserver.log")
    server.start()
    yield server
    server.stop()


def test_the_fused_adapter_is_served_and_no_other(fused_triton: Any, tiny_models: dict[str, Path]) -> None:
    client = grpcclient.InferenceServerClient(fused_triton.ports.grpc_url)
    lora = encode_adapters([AdapterRef(FUSED_ADAPTER, FUSED_SCALE)])
    plain = generate(client, "tiny-sd-int8-fused")
    # Asking for the fused adapter at its scale is accepted and changes nothing: it is in the weights.
    assert np.array_equal(generate(client, "tiny-sd-int8-fused", lora=lora), plain)
    # Close to diffusers' FP32 pipeline with the adapter loaded (UNet and text encoder).
    expected = reference_images(tiny_models["tiny-sd"], lora=lora)
    assert psnr(plain, expected) >= MIN_PSNR_DB and max_difference(plain, expected) <= MAX_PIXEL_DIFFERENCE
    assert max_difference(expected, reference_images(tiny_models["tiny-sd"])) > 8, "the adapter must be live"
    other_scale = encode_adapters([AdapterRef(FUSED_ADAPTER, 0.5)])
    with pytest.raises(Exception, match="is not one fused before calibration"):
        generate(client, "tiny-sd-int8-fused", lora=other_scale)
    client.close()



# --- dgate eval over the served FP32 and INT8 pipelines -----------------------------------------------


def test_dgate_eval_with_random_metric_weights_reports_fp32_vs_int8(
        frontend: str, model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole `dgate eval` command against the real frontend. The metric backbones are random
    (scores mean nothing; the code path is the one real weight files take): CLIP, Inception, AlexNet."""
    from dgate.cli import main
    from dgate.eval.random_weights import write_random_metric_weights

    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    weights = write_random_metric_weights(tmp_path / "weights", clip_arch="ViT-S-32")
    out = tmp_path / "eval"
    code = main(["eval", "--base-url", f"{frontend}/v1", "--model", "tiny-sd", "--model", "tiny-sd-int8",
                 "--num-prompts", "3", "--size", "64x64", "--steps", "4", "--out", str(out),
                 "--clip-weights", str(weights["clip"]), "--clip-arch", "ViT-S-32",
                 "--inception-weights", str(weights["inception"]), "--lpips-weights", str(weights["lpips"]),
                 "--model-repository", str(model_repository)])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in document["rows"]}
    assert (rows["tiny-sd"]["precision"], rows["tiny-sd-int8"]["precision"]) == ("fp32", "int8")
    int8 = rows["tiny-sd-int8"]
    assert int8["images"] == 3 and int8["psnr"] >= MIN_PSNR_DB  # the same bound as the served-image test
    assert 0 <= int8["lpips"] < 0.1 and int8["fid"] >= 0 and 0 <= int8["clip_score"] <= 100
    assert all(row["latency_ms_mean"] > 0 and row["throughput_ips"] > 0 for row in rows.values())
    assert int8["denoiser_mb"] < 0.5 * rows["tiny-sd"]["denoiser_mb"]  # INT8 weights on disk
    assert "| tiny-sd-int8 | int8 |" in (out / "results.md").read_text()
    pngs = [out / "quality_vs_precision.png", out / "latency_vs_precision.png", *sorted((out / "grids").glob("*.png"))]
    assert len(pngs) == 5
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))  # the offline W&B run
