"""LoRA core pieces on their own: adapter reading against diffusers' fuse, refit, paths, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgate.core.lora.adapter_file import read_adapter
from dgate.core.lora.deltas import LRUCache
from dgate.core.lora.refit import WeightRefitter
from dgate.core.lora.request import (
    AdapterRef,
    LoraError,
    adapter_path_for_name,
    decode_adapters,
    encode_adapters,
    resolve_adapter,
)
from dgate.tiny_lora import random_lora


@pytest.fixture(scope="module")
def tiny_sd(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["tiny-sd"]


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_adapter_deltas_equal_diffusers_fuse(tiny_sd: Path, tmp_path: Path, layout: str) -> None:
    """W + scale * up @ down per layer equals what diffusers' load_lora_weights + fuse_lora writes."""
    from diffusers import DiffusionPipeline

    file = random_lora(tiny_sd, tmp_path / f"a-{layout}.safetensors", layout=layout, text_encoder=True, alpha=6)
    layers = read_adapter(file, "StableDiffusionPipeline", ("text_encoder", "unet"), "unet")
    assert set(layers) == {"text_encoder", "unet"}
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd))
    base = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in layers}
    pipe.load_lora_weights(str(file))
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    for component, found in layers.items():
        fused = getattr(pipe, component).state_dict()
        for name, layer in found.items():
            key = next(k for k in fused if k.removeprefix("text_model.") == f"{name}.weight")
            expected = (fused[key] - base[component][key]).numpy()
            np.testing.assert_allclose(0.7 * layer.delta(), expected, atol=2e-6, err_msg=f"{component} {name}")
        assert len(found) == (12 if component == "text_encoder" else 54)


def test_refit_restores_base_bitwise_and_never_blends() -> None:
    rng = np.random.default_rng(0)
    base = {"w1": rng.standard_normal((8, 4)).astype(np.float32), "w2": rng.standard_normal((3, 3)).astype(np.float16)}
    live = {k: v.copy() for k, v in base.items()}
    refit = WeightRefitter(live)
    delta_a = {"w1": rng.standard_normal((8, 4)).astype(np.float32)}
    delta_b = {"w2": rng.standard_normal((3, 3)).astype(np.float32)}
    refit.apply("a", [(delta_a, 0.8)])
    after_a = {k: v.copy() for k, v in live.items()}
    assert not np.array_equal(after_a["w1"], base["w1"]) and np.array_equal(after_a["w2"], base["w2"])
    assert refit.apply("b", [(delta_b, 1.0)]) == {"w1", "w2"}  # what a TensorRT refit must push
    assert refit.apply("b", [(delta_b, 1.0)]) == set()
    assert np.array_equal(live["w1"], base["w1"]), "A's layer must be restored when B does not touch it"
    refit.apply("a", [(delta_a, 0.8)])
    for name in base:
        assert live[name].tobytes() == after_a[name].tobytes()  # A -> B -> A: A's bytes exactly
    refit.apply("ab", [(delta_a, 0.8), (delta_b, 0.5)])
    refit.apply((), [])
    for name in base:
        assert live[name].tobytes() == base[name].tobytes()


def test_adapter_references_stay_inside_the_directory(tmp_path: Path) -> None:
    (tmp_path / "fox.safetensors").write_bytes(b"x")
    (tmp_path / "style").mkdir()
    outside = tmp_path.parent / "outside.safetensors"
    outside.write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(outside)
    assert adapter_path_for_name(tmp_path, "fox") == "fox.safetensors"
    assert adapter_path_for_name(tmp_path, "style") == "style"
    for bad in ("../outside.safetensors", "/etc/passwd", "link.safetensors", "a/../../x"):
        with pytest.raises(LoraError):
            resolve_adapter(tmp_path, bad)
    with pytest.raises(LoraError, match="unknown adapter"):
        adapter_path_for_name(tmp_path, "nope")


def test_lora_text_round_trips_and_drops_zero_scales() -> None:
    refs = (AdapterRef("a.safetensors", 0.5), AdapterRef("b/x.safetensors", 1.0, "unet"))
    assert decode_adapters(encode_adapters(refs)) == refs
    assert encode_adapters([AdapterRef("a.safetensors", 0.0)]) == ""
    with pytest.raises(LoraError):
        decode_adapters('[{"path": "../x"}]')
    with pytest.raises(LoraError):
        decode_adapters("not json")


def test_bad_adapter_files_are_refused(tiny_sd: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    with pytest.raises(LoraError, match="not a readable safetensors"):
        read_adapter(garbage, "StableDiffusionPipeline", ("text_encoder", "unet"), "unet")
    from safetensors.torch import save_file

    stray = tmp_path / "stray.safetensors"
    save_file({"transformer.blocks.0.to_q.lora_A.weight": torch.zeros(4, 8),
               "transformer.blocks.0.to_q.lora_B.weight": torch.zeros(8, 4)}, str(stray))
    with pytest.raises(LoraError, match="match no layer"):
        read_adapter(stray, "StableDiffusionPipeline", ("text_encoder", "unet"), "unet")


def test_lru_keeps_the_most_recent() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    loads = []
    for key in "abac":
        cache.get_or_load(key, lambda key=key: loads.append(key) or len(loads))
    assert cache.keys() == ["a", "c"] and loads == ["a", "b", "c"]
    with pytest.raises(ValueError):
        cache.get_or_load("d", lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert "d" not in cache
