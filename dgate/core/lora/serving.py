"""The adapters of one served component (a text encoder or the UNet/transformer).

`AdapterSets` reads a row's `lora` text into a weight set, whatever the engine: each adapter file's
low-rank factors (not dense deltas: ~60x fewer bytes, switches as fast, low_rank.py) cached LRU per
component instance within DGATE_LORA_CACHE_MB. `ComponentAdapters` is ONNX Runtime's: rows
without adapters run on the fully optimised session exactly as before, so base traffic pays nothing
for LoRA support; rows with adapters run on a refittable session (created on first use) whose
mapped weights are rewritten in place when the adapter set changes. The refitter restores base weights bitwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dgate.core.lora.adapter_file import AdapterFile, lora_components, read_adapter
from dgate.core.lora.low_rank import ByteLRUCache, LowRankDelta, cache_bytes, layer_factors, on_device
from dgate.core.lora.refit import WeightRefitter
from dgate.core.lora.request import AdapterRef, adapters_dir, decode_adapters
from dgate.core.lora.weight_map import LoraMap
from dgate.core.onnx_session import RefittableSession, create_refittable_session
from dgate.core.pipeline_spec import PipelineSpec

CACHE_ENV = "DGATE_LORA_CACHE"  # an optional count bound beside the byte bound (DGATE_LORA_CACHE_MB)
Factors = dict[str, LowRankDelta]  # ONNX initializer name -> its change as factors


def read_component_factors(spec: PipelineSpec, component: str, lora_map: LoraMap, file: AdapterFile) -> Factors:
    layers = read_adapter(file.path, spec.pipeline_class, lora_components(spec), spec.denoiser_component)
    return layer_factors(component, layers.get(component, {}), lora_map)


class AdapterSets:
    """A component's adapters: the `lora` text of a row -> the weight set it asks for."""

    def __init__(self, spec: PipelineSpec, component: str, lora_map: LoraMap, directory: Path | None = None,
                 prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.spec = spec
        self.component = component
        self.lora_map = lora_map
        self.directory = directory or adapters_dir()
        # `prepare` puts fresh arrays where the engine wants them (a GPU engine: on its device), once per adapter.
        self.prepare = prepare
        count = os.environ.get(CACHE_ENV)
        self.cache: ByteLRUCache[AdapterFile, Factors] = ByteLRUCache(cache_bytes(),
                                                                     max_items=int(count) if count else None)

    def _load(self, file: AdapterFile) -> Factors:
        factors = read_component_factors(self.spec, self.component, self.lora_map, file)
        return on_device(factors, self.prepare) if self.prepare is not None else factors

    def _deltas(self, ref: AdapterRef) -> tuple[AdapterFile, Factors]:
        file = AdapterFile.find(self.directory, ref.path)
        return file, self.cache.get_or_load(file, lambda: self._load(file))

    def resolve(self, lora: str) -> tuple[tuple, list[tuple[Factors, float]]]:
        """The `lora` text -> (a key of the weight set, [(deltas, scale)]); ((), []) = base weights.

        Reads and checks every adapter before any weight changes (a bad file leaves them as they are).
        """
        refs: Sequence[AdapterRef] = [r for r in decode_adapters(lora)
                                      if r.applies_to(self.component, self.spec.denoiser_component)]
        key, adapters = [], []
        for ref in refs:
            file, deltas = self._deltas(ref)
            if deltas:
                key.append((file, ref.scale))
                adapters.append((deltas, ref.scale))
        return tuple(key), adapters



class ComponentAdapters(AdapterSets):
    """ONNX Runtime's adapters: a second, refittable session over the component's graph."""

    def __init__(self, spec: PipelineSpec, component: str, model_path: Path, lora_map: LoraMap,
                 threads: int = 0, directory: Path | None = None) -> None:
        super().__init__(spec, component, lora_map, directory)
        self.model_path = model_path
        self.threads = threads
        self._refittable: RefittableSession | None = None
        self._refitter: WeightRefitter | None = None

    def refittable(self) -> RefittableSession:
        if self._refittable is None:
            self._refittable = create_refittable_session(self.model_path, self.lora_map.initializers, self.threads)
            self._refitter = WeightRefitter(self._refittable.weights)
        return self._refittable

    def session_for(self, key: tuple, adapters: list[tuple[Factors, float]]):
        """The refittable session with `adapters` applied to its weights (base session: key ())."""
        session = self.refittable()
        assert self._refitter is not None
        self._refitter.apply(key, adapters)
        return session.session
