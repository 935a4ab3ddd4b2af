"""LoRA end to end: adapters refit in the running tritonserver, through tritonclient and the frontend.

The reference is diffusers itself: `load_lora_weights` + `set_adapters` on the same pipeline and
seed. Adapters are random-weight peft layers on the tiny pipelines' own modules (dgate.tiny_lora),
saved in diffusers' layout or kohya's and read back through the same code as real adapter files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from frontend_fixtures import start_frontend
from openai import OpenAI
from safetensors.torch import load_file, save_file
from triton_requests import ensemble_inputs, reference_images

from dgate.core.lora.request import AdapterRef, encode_adapters
from dgate.frontend.settings import FrontendSettings
from dgate.tiny_lora import random_lora

# FP32 ONNX Runtime (refit weights) vs PyTorch diffusers with peft layers: the issue allows 2/255.
MAX_PIXEL_DIFFERENCE = 2
FAST = {"num_inference_steps": 2}


def lora_text(*adapters: tuple[str, float]) -> str:
    return encode_adapters(AdapterRef(f"{name}.safetensors", scale) for name, scale in adapters)


@pytest.fixture(scope="module")
def adapters(tiny_models: dict[str, Path]) -> Path:
    """The session's adapters directory (DGATE_LORA_DIR, which tritonserver also reads), filled."""
    directory = Path(os.environ["DGATE_LORA_DIR"])
    sd = tiny_models["tiny-sd"]
    random_lora(sd, directory / "sd-a.safetensors", seed=1, text_encoder=True)
    random_lora(sd, directory / "sd-b.safetensors", seed=2)
    random_lora(sd, directory / "sd-kohya.safetensors", seed=3, layout="kohya", text_encoder=True)
    (directory / "sd-folder").mkdir(exist_ok=True)
    random_lora(sd, directory / "sd-folder" / "pytorch_lora_weights.safetensors", seed=4)
    random_lora(tiny_models["tiny-sdxl"], directory / "sdxl-kohya.safetensors", seed=5, layout="kohya",
                text_encoder=True)
    # The tiny DiTs' images move little under a small random adapter: larger factors.
    random_lora(tiny_models["tiny-flux"], directory / "flux.safetensors", seed=6, text_encoder=True, magnitude=3.0)
    random_lora(tiny_models["tiny-pixart"], directory / "pixart.safetensors", seed=7, magnitude=3.0)
    random_lora(tiny_models["tiny-sd3"], directory / "sd3.safetensors", seed=8, magnitude=3.0)
    (directory / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    # Right keys, wrong shapes: one layer's lora_A reads one more input feature than the model has.
    state = load_file(str(directory / "sd-b.safetensors"))
    key = next(k for k in state if k.endswith("to_k.lora_A.weight"))
    state[key] = np.pad(state[key].numpy(), ((0, 0), (0, 1)))
    import torch

    save_file({k: torch.as_tensor(v) for k, v in state.items()}, str(directory / "wrong-shape.safetensors"))
    return directory


@pytest.fixture(scope="module")
def grpc(triton: Any) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(triton.ports.grpc_url)
    yield client
    client.close()


def generate(client: Any, model: str = "tiny-sd", **overrides: Any) -> np.ndarray:
    return client.infer(model, ensemble_inputs(grpcclient, **(FAST | overrides))).as_numpy("images")


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize(("model", "adapter", "scale"), [
    ("tiny-sd", "sd-a", 0.8),  # diffusers/peft layout, UNet + text encoder
    ("tiny-sd", "sd-kohya", 1.0),  # kohya layout, UNet + text encoder, alpha from the file
    ("tiny-sdxl", "sdxl-kohya", 0.7),  # two text encoders
    ("tiny-flux", "flux", 0.9),  # DiT (dynamo-exported), CLIP text encoder
    ("tiny-pixart", "pixart", 1.0),  # no diffusers LoRA loader: peft keys as saved
    ("tiny-sd3", "sd3", 0.6),
])
def test_served_adapter_matches_diffusers(grpc: Any, adapters: Path, tiny_models: dict, model: str, adapter: str,
                                          scale: float) -> None:
    lora = lora_text((adapter, scale))
    served = generate(grpc, model, lora=lora)
    expected = reference_images(tiny_models[model], lora=lora, **FAST)
    assert max_difference(served, expected) <= MAX_PIXEL_DIFFERENCE
    assert max_difference(served, generate(grpc, model)) > 8, "the adapter must change the image"


def test_switching_never_blends_and_removal_restores_the_base(grpc: Any, adapters: Path) -> None:
    base = generate(grpc)
    a = generate(grpc, lora=lora_text(("sd-a", 1.0)))
    b = generate(grpc, lora=lora_text(("sd-b", 1.0)))
    assert np.array_equal(generate(grpc, lora=lora_text(("sd-a", 1.0))), a)  # A -> B -> A is A exactly
    stacked = generate(grpc, lora=lora_text(("sd-a", 0.5), ("sd-b", 0.7)))
    assert len({x.tobytes() for x in (base, a, b, stacked)}) == 4
    assert np.array_equal(generate(grpc), base)
    folder = generate(grpc, lora=encode_adapters([AdapterRef("sd-folder", 1.0)]))  # diffusers folder layout
    assert max_difference(folder, base) > 8
    assert np.array_equal(generate(grpc, lora=lora_text(("sd-b", 1.0))), b)
    assert np.array_equal(generate(grpc), base)


def _unet_counts(client: Any) -> tuple[int, int]:
    stats = client.get_inference_statistics("tiny-sd_unet", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_each_get_their_own_adapters(grpc: Any, triton: Any, adapters: Path) -> None:
    sets = ["", lora_text(("sd-a", 1.0)), lora_text(("sd-b", 0.9)), lora_text(("sd-a", 0.4), ("sd-b", 0.6))]
    expected = {lora: generate(grpc, lora=lora, seed=7, num_inference_steps=6) for lora in sets}
    before = _unet_counts(grpc)
    jobs = sets * 3
    clients = [grpcclient.InferenceServerClient(triton.ports.grpc_url) for _ in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda i: generate(clients[i], lora=jobs[i], seed=7, num_inference_steps=6),
                                range(len(jobs))))
    for client in clients:
        client.close()
    for lora, images in zip(jobs, results, strict=True):
        assert np.array_equal(images, expected[lora]), f"request with lora={lora!r} got another adapter's image"
    inferences, executions = (a - b for a, b in zip(_unet_counts(grpc), before, strict=True))
    assert inferences == len(jobs) * 6 * 2
    assert executions < inferences / 2, "concurrent steps should still meet in UNet batches"


@pytest.mark.parametrize(("lora", "message"), [
    (lora_text(("garbage", 1.0)), "not a readable safetensors"),
    (lora_text(("wrong-shape", 1.0)), "has shape"),
    (lora_text(("flux", 1.0)), "match no layer"),  # another pipeline's adapter
    (encode_adapters([AdapterRef("missing.safetensors")]), "no adapter"),
    ('[{"path": "../../etc/passwd"}]', "relative to the adapters directory"),
])
def test_bad_adapters_are_refused_and_weights_stay(grpc: Any, adapters: Path, lora: str, message: str) -> None:
    a = generate(grpc, lora=lora_text(("sd-a", 1.0)))
    with pytest.raises(Exception, match=message) as error:
        generate(grpc, lora=lora)
    assert "INVALID_ARG" in str(error.value)
    assert np.array_equal(generate(grpc, lora=lora_text(("sd-a", 1.0))), a)


# --- the HTTP API ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frontend(triton: Any, adapters: Path) -> Iterator[str]:
    base_url, stop = start_frontend(FrontendSettings(triton_url=triton.ports.grpc_url, lora_dir=str(adapters),
                                                     default_model="tiny-sd"))
    yield base_url
    stop()


def image(client: OpenAI, **extra: Any) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    result = client.images.generate(model="tiny-sd", prompt="a red fox in the snow", size="64x64",
                                    extra_body={"seed": 3, "num_inference_steps": 2} | extra)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))))


def test_http_lora_api(client: OpenAI, frontend: str, grpc: Any) -> None:
    http = httpx.Client(base_url=frontend, timeout=60)
    base = image(client)
    by_name = image(client, lora="sd-a", lora_scale=0.8)  # a file in the adapters dir, no set_lora first
    assert max_difference(by_name, base) > 8
    expected = generate(grpc, lora=lora_text(("sd-a", 0.8)), seed=3, prompt="a red fox in the snow")
    assert np.array_equal(by_name[None], expected)

    answer = http.post("/v1/set_lora", json={"lora_nickname": "fox", "lora_path": "sd-a.safetensors",
                                             "strength": 0.8})
    assert answer.status_code == 200, answer.text
    assert answer.json()["active"]["all"][0] | {} == {"nickname": "fox", "path": "sd-a.safetensors",
                                                      "strength": 0.8, "target": "all", "merged": False}
    assert np.array_equal(image(client), by_name)  # the active adapter applies to requests without `lora`
    assert np.array_equal(image(client, lora="fox", lora_scale=0.8), by_name)
    assert np.array_equal(image(client, lora=[]), base)  # an explicit empty list: no adapters

    stacked = http.post("/v1/set_lora", json={"lora_nickname": ["fox", "sd-b"], "strength": [0.5, 0.7]})
    assert stacked.status_code == 200, stacked.text
    assert np.array_equal(image(client), image(client, lora=["sd-a", "sd-b"], lora_scale=[0.5, 0.7]))

    assert http.post("/v1/merge_lora_weights", json={"strength": 0.5}).json()["active"]["all"][0]["merged"]
    refused = http.post("/v1/set_lora", json={"lora_nickname": "sd-b"})
    assert refused.status_code == 400 and "unmerge" in refused.json()["error"]["message"]
    assert http.post("/v1/unmerge_lora_weights").status_code == 200

    listed = http.get("/v1/list_loras").json()
    assert {a["nickname"] for a in listed["loaded_adapters"]} >= {"fox", "sd-b"}
    loaded = http.post("/v1/loras/load", json={"name": "kohya", "path": "sd-kohya.safetensors"})
    assert loaded.status_code == 200 and loaded.json()["components"]["unet"]["layers"] == 54
    assert "kohya" in {a["name"] for a in http.get("/v1/loras/list").json()["data"]}
    assert http.post("/v1/loras/unload", json={"name": "kohya"}).json()["status"] == "unloaded"
    assert http.delete("/v1/loras/fox").json() == {"id": "fox", "object": "lora.deleted", "deleted": True}
    assert http.delete("/v1/loras/fox").status_code == 404
    http.post("/v1/set_lora", json={"lora_nickname": "sd-b", "strength": 0.0})
    assert np.array_equal(image(client), base)


@pytest.mark.parametrize(("body", "param"), [
    ({"lora_nickname": "bad", "lora_path": "garbage.safetensors"}, "lora_path"),
    ({"lora_nickname": "bad", "lora_path": "wrong-shape.safetensors"}, "lora_path"),
    ({"lora_nickname": "bad", "lora_path": "../secrets.safetensors"}, "lora_path"),
    ({"lora_nickname": "bad", "lora_path": "/etc/passwd"}, "lora_path"),
    ({"lora_nickname": "no-such-adapter"}, "lora"),
    ({"lora_nickname": ["a", "b"], "strength": [1.0]}, "strength"),
])
def test_bad_set_lora_is_a_400_and_nothing_changes(client: OpenAI, frontend: str, body: dict, param: str) -> None:
    http = httpx.Client(base_url=frontend, timeout=60)
    before = http.get("/v1/list_loras").json()
    image_before = image(client)
    answer = http.post("/v1/set_lora", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert http.get("/v1/list_loras").json() == before
    assert np.array_equal(image(client), image_before)


def test_unknown_adapter_in_a_generation_is_a_400(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="unknown adapter"):
        image(client, lora="nobody")
    with pytest.raises(openai.BadRequestError, match="lora_scale has 1 values for 2 adapters"):
        image(client, lora=["sd-a", "sd-b"], lora_scale=[1.0])


def test_an_adapter_trained_by_dgate_finetune_is_served(client: OpenAI, frontend: str, adapters: Path,
                                                        tiny_models: dict, tmp_path: Path) -> None:
    """`dgate finetune lora` writes into the adapters directory; set_lora activates it; the served image
    changes and equals diffusers' load_lora_weights of the same file."""
    import yaml

    from dgate.cli import main

    dataset = tmp_path / "data"
    assert main(["finetune", "make-dataset", "--out", str(dataset), "--count", "4", "--size", "64",
                 "--prefix", "a photo of a fox, "]) == 0
    config = tmp_path / "fox.yaml"
    config.write_text(yaml.safe_dump({
        "pretrained_model": str(tiny_models["tiny-sd"]), "dataset": str(dataset),
        "output": str(adapters / "trained-fox.safetensors"), "output_dir": str(tmp_path / "run"),
        "rank": 4, "lora_alpha": 8, "resolution": 64, "batch_size": 2, "max_steps": 6, "learning_rate": 1e-2,
        "device": "cpu", "checkpoint_every": 6, "wandb": False}))
    assert main(["finetune", "lora", "--config", str(config)]) == 0
    http = httpx.Client(base_url=frontend, timeout=60)
    base = image(client, lora=[])
    answer = http.post("/v1/set_lora", json={"lora_nickname": "trained-fox", "strength": 1.0})
    assert answer.status_code == 200, answer.text
    served = image(client)
    http.post("/v1/set_lora", json={"lora_nickname": "trained-fox", "strength": 0.0})
    assert max_difference(served, base) > 2, "the trained adapter must change the image"
    expected = reference_images(tiny_models["tiny-sd"], lora=lora_text(("trained-fox", 1.0)), seed=3,
                                prompt="a red fox in the snow", **FAST)
    assert max_difference(served[None], expected) <= MAX_PIXEL_DIFFERENCE
