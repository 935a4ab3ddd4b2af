"""LoRA core pieces on their own: adapter reading against diffusers' fuse, refit, paths, adapter roots, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgate.core.lora.adapter_file import AdapterFile, read_adapter
from dgate.core.lora.deltas import LRUCache
from dgate.core.lora.refit import WeightRefitter
from dgate.core.lora.request import (
    LORA_DIR_ENV,
    LORA_DIRS_ENV,
    AdapterRef,
    LoraError,
    adapter_path_for_name,
    decode_adapters,
    encode_adapters,
    extra_adapter_roots,
    parse_adapter_roots,
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


def test_adapter_roots_are_read_like_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_adapter_roots("/a::/b/c:") == (Path("/a"), Path("/b/c"))
    assert parse_adapter_roots("") == ()
    monkeypatch.delenv(LORA_DIRS_ENV, raising=False)
    assert extra_adapter_roots() == ()
    monkeypatch.setenv(LORA_DIRS_ENV, "/srv/loras:/mnt/team")
    assert extra_adapter_roots() == (Path("/srv/loras"), Path("/mnt/team"))


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(the adapters directory, a DGATE_LORA_DIRS root, a directory outside both), set in the environment
    as the Triton models read it."""
    directory, shared, outside = tmp_path / "loras", tmp_path / "shared", tmp_path / "outside"
    for folder in (directory, shared / "style", outside):
        folder.mkdir(parents=True)
    (directory / "fox.safetensors").write_bytes(b"fox")
    (shared / "a.safetensors").write_bytes(b"a")
    (shared / "style" / "pytorch_lora_weights.safetensors").write_bytes(b"style")
    (outside / "secret.safetensors").write_bytes(b"secret")
    monkeypatch.setenv(LORA_DIR_ENV, str(directory))
    monkeypatch.setenv(LORA_DIRS_ENV, f"{tmp_path / 'nowhere'}:{shared}")
    return directory, shared, outside


def test_absolute_paths_resolve_under_the_roots_only(roots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    directory, shared, outside = roots
    assert resolve_adapter(directory, str(shared / "a.safetensors")) == shared / "a.safetensors"
    assert resolve_adapter(directory, str(shared / "style")) == shared / "style"
    assert resolve_adapter(directory, str(directory / "fox.safetensors")) == directory / "fox.safetensors"
    assert resolve_adapter(directory, "fox.safetensors") == directory / "fox.safetensors"  # relative: unchanged
    (tmp_path / "shared-link").symlink_to(shared)  # a symlinked name of a root is that root
    assert resolve_adapter(directory, str(tmp_path / "shared-link" / "a.safetensors")) == shared / "a.safetensors"
    (shared / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (outside / "into.safetensors").symlink_to(shared / "a.safetensors")
    for bad, message in [
        (str(outside / "secret.safetensors"), "lies outside"),
        ("/etc/passwd", "lies outside"),
        (str(outside / "into.safetensors"), "lies outside"),  # a link outside the roots, into one
        (str(shared / "escape.safetensors"), "leaves the adapter roots"),
        (f"{shared}/../outside/secret.safetensors", "without '..'"),
        (f"file://{shared}/a.safetensors", "not a URL"),
        ("s3://bucket/a.safetensors", "not a URL"),
        ("C:\\loras\\a.safetensors", "not a URL"),
        (str(shared / "missing.safetensors"), "no adapter"),
    ]:
        with pytest.raises(LoraError, match=message) as error:
            resolve_adapter(directory, bad)
        assert error.value.param == "lora_path"
    # Without DGATE_LORA_DIRS' root (explicit roots win over the environment), `shared` is outside.
    with pytest.raises(LoraError, match="lies outside"):
        resolve_adapter(directory, str(shared / "a.safetensors"), ())
    with pytest.raises(LoraError, match="must be relative"):  # a name is never an absolute path
        adapter_path_for_name(directory, str(shared / "a"))


def test_an_absolute_path_round_trips_to_the_same_file(roots: tuple[Path, Path, Path]) -> None:
    """What the frontend encodes is what the Triton models decode, and AdapterFile.find (their lookup,
    the adapters directory and DGATE_LORA_DIRS from the environment) finds the same file."""
    directory, shared, _ = roots
    refs = (AdapterRef(str(shared / "a.safetensors"), 0.5), AdapterRef(str(shared / "style"), 1.0, "unet"),
            AdapterRef("fox.safetensors", 0.8))
    decoded = decode_adapters(encode_adapters(refs))
    assert decoded == refs
    assert [AdapterFile.find(directory, ref.path).path for ref in decoded] == [
        shared / "a.safetensors", shared / "style", directory / "fox.safetensors"]
    for text in (f'[{{"path": "{shared}/../outside/secret.safetensors"}}]', '[{"path": "https://x/a.safetensors"}]'):
        with pytest.raises(LoraError):
            decode_adapters(text)


def test_an_adapter_under_another_root_reads_like_one_in_the_directory(tiny_sd: Path, roots: tuple[Path, Path, Path]
                                                                      ) -> None:
    directory, shared, _ = roots
    file = random_lora(tiny_sd, shared / "team" / "b.safetensors", text_encoder=True)
    (directory / "b.safetensors").write_bytes(file.read_bytes())
    components = ("text_encoder", "unet")
    by_path = read_adapter(AdapterFile.find(directory, str(file)).path, "StableDiffusionPipeline", components, "unet")
    by_name = read_adapter(AdapterFile.find(directory, adapter_path_for_name(directory, "b")).path,
                           "StableDiffusionPipeline", components, "unet")
    assert by_path.keys() == by_name.keys() == set(components)
    for component in components:
        assert by_path[component].keys() == by_name[component].keys()
        for name, layer in by_path[component].items():
            assert np.array_equal(layer.delta(), by_name[component][name].delta())


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
