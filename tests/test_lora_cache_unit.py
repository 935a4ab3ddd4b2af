"""The adapter cache (dgate/core/lora/low_rank.py): adapters kept as low-rank factors, bounded in bytes.

Factors must write the same weights as the dense deltas they replace (numpy and torch refitters,
transposed MatMul weights, 1x1 convolutions, layers sharing an initializer, FP16 buffers, stacked
adapters), switches must stay exact (A -> B -> A bitwise, the base restored bitwise), and the cache
must evict the least recently used adapters by bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dgate.core.lora.adapter_file import LoraLayer
from dgate.core.lora.deltas import layer_deltas
from dgate.core.lora.low_rank import (
    CACHE_MB_ENV,
    ByteLRUCache,
    LowRankDelta,
    layer_factors,
    nbytes,
    on_device,
)
from dgate.core.lora.refit import TorchWeightRefitter, WeightRefitter
from dgate.core.lora.request import LoraError, encode_adapters
from dgate.core.lora.weight_map import LoraMap, MappedWeight

# layer -> (initializer, stored transposed, PyTorch's shape): a MatMul weight, a Gemm one, a 1x1 conv,
# and two layers (as kohya's fused and split names can) on one initializer.
MAP = LoraMap({
    "attn.to_q": MappedWeight("matmul_q", True, (24, 16)),
    "attn.to_out.0": MappedWeight("gemm_out", False, (16, 24)),
    "proj_in": MappedWeight("conv", False, (12, 16, 1, 1)),
    "ff.a": MappedWeight("shared", False, (20, 8)),
    "ff.b": MappedWeight("shared", False, (20, 8)),
}, frozenset({"skipped"}))


def onnx_shape(mapped: MappedWeight) -> tuple[int, ...]:
    return mapped.shape[::-1] if mapped.transposed else mapped.shape


def adapter(seed: int, rank: int = 4) -> dict[str, LoraLayer]:
    rng = np.random.default_rng(seed)
    layers = {}
    for name, mapped in MAP.layers.items():
        out, rest = mapped.shape[0], mapped.shape[1:]
        conv = len(rest) == 3
        layers[name] = LoraLayer(rng.standard_normal((rank, *rest)).astype(np.float32),
                                 rng.standard_normal((out, rank, 1, 1) if conv else (out, rank)).astype(np.float32),
                                 scale=0.5 + seed)
    layers["skipped"] = layers["attn.to_q"]  # a layer the graph does not compute
    return layers


def base_weights(dtype: type = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(99)
    return {m.initializer: rng.standard_normal(onnx_shape(m)).astype(dtype) for m in MAP.layers.values()}


def test_factors_are_the_dense_deltas_in_a_fraction_of_the_bytes() -> None:
    layers = adapter(1, rank=2)
    dense, factors = layer_deltas("unet", layers, MAP), layer_factors("unet", layers, MAP)
    assert set(factors) == set(dense) == {"matmul_q", "gemm_out", "conv", "shared"}
    for name, delta in dense.items():
        assert factors[name].shape == delta.shape
        np.testing.assert_allclose(factors[name].dense(), delta, rtol=1e-5, atol=1e-5, err_msg=name)
    assert factors["shared"].left.shape[1] == 4  # two rank-2 layers on one weight: one rank-4 pair
    assert nbytes(factors) < nbytes(dense) / 2


def test_factors_keep_the_dense_checks() -> None:
    layers = adapter(1)
    with pytest.raises(LoraError, match="matches no refittable layer"):
        layer_factors("unet", layers | {"nowhere": layers["proj_in"]}, MAP)
    wrong = LoraLayer(np.ones((4, 17), np.float32), np.ones((24, 4), np.float32), 1.0)  # one input too many
    with pytest.raises(LoraError, match="has shape"):
        layer_factors("unet", layers | {"attn.to_q": wrong}, MAP)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_refit_writes_the_same_weights_from_factors_and_switches_exactly(dtype: type) -> None:
    base = base_weights(dtype)
    a, b = adapter(1), adapter(2)
    by: dict[str, tuple[Any, Any]] = {"dense": (layer_deltas("unet", a, MAP), layer_deltas("unet", b, MAP)),
          "factors": (layer_factors("unet", a, MAP), layer_factors("unet", b, MAP))}
    written: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for kind, (da, db) in by.items():
        live = {k: v.copy() for k, v in base.items()}
        refit = WeightRefitter(live)
        states = {}
        for key, adapters in (("a", [(da, 0.8)]), ("b", [(db, 1.0)]), ("ab", [(da, 0.5), (db, -0.7)])):
            refit.apply(key, adapters)
            states[key] = {k: v.copy() for k, v in live.items()}
        refit.apply("a", [(da, 0.8)])
        assert all(live[k].tobytes() == states["a"][k].tobytes() for k in live), f"{kind}: A -> B -> A drifted"
        refit.apply((), [])
        assert all(live[k].tobytes() == base[k].tobytes() for k in live), f"{kind}: the base was not restored"
        written[kind] = states
    tolerance = 1e-4 if dtype == np.float32 else 1e-2  # FP16: the two sums may round to neighbours
    for key, state in written["dense"].items():
        for name, weight in state.items():
            assert not np.array_equal(weight, base[name])
            np.testing.assert_allclose(written["factors"][key][name].astype(np.float32), weight.astype(np.float32),
                                       rtol=tolerance, atol=tolerance, err_msg=f"{key} {name}")


def test_a_dense_and_a_factored_adapter_stack() -> None:
    base = base_weights()
    dense, factors = layer_deltas("unet", adapter(1), MAP), layer_factors("unet", adapter(2), MAP)
    live = {k: v.copy() for k, v in base.items()}
    WeightRefitter(live).apply("mixed", [(factors, 0.3), (dense, 0.6)])
    for name in base:
        expected = base[name] + 0.3 * factors[name].dense() + 0.6 * dense[name]
        np.testing.assert_allclose(live[name], expected, rtol=1e-5, atol=1e-5)


def test_torch_refit_writes_the_same_weights_from_factors_on_the_device() -> None:
    torch_map = LoraMap({name: MappedWeight(m.initializer, False, m.shape) for name, m in MAP.layers.items()},
                        MAP.unused)
    rng = np.random.default_rng(5)
    base = {m.initializer: torch.from_numpy(rng.standard_normal(m.shape).astype(np.float32))
            for m in torch_map.layers.values()}
    moved: list[str] = []

    def prepare(arrays: dict) -> dict:  # what TorchEngine._on_device does: numpy -> tensors, once
        moved.extend(arrays)
        return {name: torch.from_numpy(np.asarray(value, np.float32)) for name, value in arrays.items()}

    layers = adapter(3)
    factors = on_device(layer_factors("unet", layers, torch_map), prepare)
    assert all(isinstance(f.left, torch.Tensor) and isinstance(f.right, torch.Tensor) for f in factors.values())
    assert len(moved) == 2 * len(factors)
    dense = prepare(layer_deltas("unet", layers, torch_map))
    results = []
    for deltas in (dense, factors):
        live = {k: v.clone() for k, v in base.items()}
        refit = TorchWeightRefitter(live)
        refit.apply("x", [(deltas, 0.9)])
        results.append({k: v.clone() for k, v in live.items()})
        refit.apply((), [])
        assert all(torch.equal(live[k], base[k]) for k in live)
    for name in base:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-5, atol=1e-5)


def test_the_cache_evicts_the_least_recently_used_by_bytes() -> None:
    cache: ByteLRUCache[str, np.ndarray] = ByteLRUCache(3000)
    loads: list[str] = []

    def load(key: str, size: int) -> np.ndarray:
        loads.append(key)
        return np.zeros(size, np.uint8)

    cache.get_or_load("a", lambda: load("a", 1000))
    cache.get_or_load("b", lambda: load("b", 1500))
    cache.get_or_load("a", lambda: load("a", 1000))  # a hit: a becomes the most recent
    cache.get_or_load("c", lambda: load("c", 1000))  # 3500 > 3000: b (least recent) goes
    assert cache.keys() == ["a", "c"] and cache.bytes == 2000 and loads == ["a", "b", "c"]
    cache.get_or_load("big", lambda: load("big", 5000))  # over the bound alone: kept, everything else goes
    assert cache.keys() == ["big"] and cache.bytes == 5000
    with pytest.raises(ValueError):
        cache.get_or_load("bad", lambda: (_ for _ in ()).throw(ValueError("bad file")))
    assert "bad" not in cache and cache.bytes == 5000
    counted: ByteLRUCache[str, np.ndarray] = ByteLRUCache(10**9, max_items=2)
    for key in "xyz":
        counted.get_or_load(key, lambda: np.zeros(1))
    assert counted.keys() == ["y", "z"]


def test_a_cached_adapter_counts_its_factors_bytes() -> None:
    factors = layer_factors("unet", adapter(1), MAP)
    assert nbytes(factors) == sum(f.left.nbytes + f.right.nbytes for f in factors.values())
    tensor = LowRankDelta(torch.zeros(3, 2), torch.zeros(2, 5), (3, 5))
    assert nbytes({"t": tensor, "d": torch.zeros(4, dtype=torch.float16)}) == (6 + 10) * 4 + 4 * 2


def test_adapter_sets_cache_a_real_adapter_as_factors_within_the_byte_bound(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    from dgate.core.engines.torch_engine import lora_map_of
    from dgate.core.families import spec_from_pipeline
    from dgate.core.lora.adapter_file import AdapterFile, lora_components, read_adapter
    from dgate.core.lora.request import AdapterRef
    from dgate.core.lora.serving import AdapterSets
    from dgate.tiny_lora import random_lora

    model = tiny_models["tiny-sd"]
    pipe = DiffusionPipeline.from_pretrained(str(model))
    spec = spec_from_pipeline(pipe, "tiny-sd")
    for seed in (1, 2, 3):
        random_lora(model, tmp_path / f"a{seed}.safetensors", seed=seed)
    lora_map = lora_map_of(pipe.unet)
    one = layer_factors("unet", read_adapter(tmp_path / "a1.safetensors", spec.pipeline_class, lora_components(spec),
                                             "unet")["unet"], lora_map)
    # Room for two adapters' factors, not three.
    monkeypatch.setenv(CACHE_MB_ENV, str(2.5 * nbytes(one) / 2**20))
    sets = AdapterSets(spec, "unet", lora_map, tmp_path)
    for seed in (1, 2, 3):
        key, adapters = sets.resolve(encode_adapters([AdapterRef(f"a{seed}.safetensors", 0.5)]))
        assert key and all(isinstance(d, LowRankDelta) for d in adapters[0][0].values())
    assert [file.path.name for file in sets.cache.keys()] == ["a2.safetensors", "a3.safetensors"]
    assert sets.cache.bytes <= 2.5 * nbytes(one)
    layers = read_adapter(AdapterFile.find(tmp_path, "a3.safetensors").path, spec.pipeline_class,
                          lora_components(spec), "unet")["unet"]
    dense = layer_deltas("unet", layers, lora_map)
    for name, delta in adapters[0][0].items():
        np.testing.assert_allclose(delta.dense(), dense[name], rtol=1e-5, atol=1e-6)
