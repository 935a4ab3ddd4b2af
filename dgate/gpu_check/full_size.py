"""(d) Full-size latency: SD 1.5 and SDXL with random weights (dgate.full_size) in FP16, diffusers'
eager pipeline against D-Gate's image program on the torch engine, in process.

per-step overhead = (D-Gate's program - steps x UNet step - VAE decode) / steps: what the program adds
to the model math (host round trips of each step's tensors, numpy scheduler arithmetic, Python). The
step and the decode are timed on inputs already on the device, so their copies count as overhead.
"""

from __future__ import annotations

import copy
import json
import statistics
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from dgate.core.engines import ComponentEngine
from dgate.core.pipeline_spec import PipelineSpec
from dgate.gpu_check.environment import Environment
from dgate.gpu_check.report import MEASURED, CaseResult
from dgate.gpu_check.timing import median_seconds, timed
from dgate.gpu_check.workspace import Arrays, as_numpy, engine_call

SECTION = "full_size"
# (pipeline, size, steps, guidance): the published defaults' sizes, steps as asked of the check.
CASES = (("full-sd15", 512, 50, 7.5), ("full-sdxl", 1024, 30, 5.0))
WARMUP_STEPS = 2
STEP_REPEATS, DECODE_REPEATS = 10, 3


def case_name(name: str, size: int, steps: int) -> str:
    return f"{name} {size}px x{steps} steps"


@dataclass
class FullSizeModel:
    name: str
    pipe: Any  # on the check's device, FP16 on a GPU
    spec: PipelineSpec
    engines: dict[str, ComponentEngine]
    tokenizers: dict[str, Any] = field(default_factory=dict)  # text encoder -> PromptTokenizer


def build_pipeline(name: str, device: str) -> Any:
    """The full-size architecture built straight on `device` (random init there: seconds on a GPU, no
    multi-gigabyte files written and read back), FP16 on a GPU."""
    from dgate.full_size import SEED, _spec  # the published configs, as dgate.full_size builds them

    pipeline_class, factories, others = _spec(name)
    dtype = torch.float16 if device == "cuda" else torch.float32
    modules = {}
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        for index, (component, factory) in enumerate(factories.items()):
            torch.manual_seed(SEED + index)
            with torch.device(device):
                modules[component] = factory().to(dtype).eval()
    # The scheduler as saved and loaded back: its config then names its class, as D-Gate's spec reads it.
    scheduler = others["scheduler"]
    others = others | {"scheduler": type(scheduler).from_config(json.loads(scheduler.to_json_string()))}
    pipe = pipeline_class(**modules, **others)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FullSizeModels:
    """Each full-size pipeline built once, with its torch engines sharing the pipeline's modules."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._models: dict[str, FullSizeModel] = {}

    def get(self, name: str) -> FullSizeModel:
        if name not in self._models:
            from dgate.core.engines.torch_engine import TorchEngine
            from dgate.core.families import spec_from_pipeline
            from dgate.core.tokenization import PromptTokenizer

            pipe = build_pipeline(name, self.environment.device)
            spec = spec_from_pipeline(pipe, name, precision="fp16")
            placement = self.environment.placement
            engines: dict[str, ComponentEngine] = {
                component: TorchEngine.from_modules(pipe, spec, component, placement)
                for component in (spec.denoiser_component, *(e.component for e in spec.text_encoders))}
            # The decoder's own copy: the spec may keep it in FP32 (SDXL's VAE overflows in FP16) while
            # diffusers upcasts its FP16 VAE only around each decode.
            engines["vae_decoder"] = TorchEngine.from_modules(SimpleNamespace(vae=copy.deepcopy(pipe.vae)), spec,
                                                              "vae_decoder", placement)
            tokenizers = {e.component: PromptTokenizer.from_transformers(getattr(pipe, e.tokenizer), e.pad_token_id)
                          for e in spec.text_encoders}
            self._models[name] = FullSizeModel(name, pipe, spec, engines, tokenizers)
        return self._models[name]

    def release(self) -> None:
        self._models.clear()
        if self.environment.on_gpu:
            torch.cuda.empty_cache()


def engine_text(model: FullSizeModel, prompt: str, negative_prompt: str) -> dict[str, Arrays]:
    """What the tokenize and text encoder models return, on the torch engines (both prompts as one batch)."""
    from dgate.core.families import family_of

    family = family_of(model.spec)
    text: dict[str, Arrays] = {}
    for encoder in model.spec.text_encoders:
        length = model.spec.limits.default_max_sequence_length if encoder.variable_length else encoder.max_length
        ids, mask = model.tokenizers[encoder.component]([negative_prompt, prompt], length)
        inputs, outputs = family.component_io(model.spec, encoder.component)
        given = {"input_ids": ids, "attention_mask": mask}
        results = model.engines[encoder.component].run({t.name: given[t.name] for t in inputs})
        text[encoder.component] = {t.name: as_numpy(out) for t, out in zip(outputs, results, strict=True)}
        text[encoder.component]["attention_mask"] = mask
    return text


def _values(size: int, steps: int, guidance: float) -> dict[str, Any]:
    return {"prompt": "a lighthouse at dusk, oil painting", "negative_prompt": "", "num_images": 1,
            "num_inference_steps": steps, "guidance_scale": guidance, "seed": 0, "height": size, "width": size,
            "scheduler": "default", "max_sequence_length": 0, "true_cfg_scale": 1.0}


def diffusers_seconds(model: FullSizeModel, values: dict[str, Any], device: str) -> float:
    from dgate.reference import diffusers_call_kwargs

    return timed(lambda: model.pipe(**diffusers_call_kwargs(model.pipe, values)).images, device)[0]


def dgate_seconds(model: FullSizeModel, values: dict[str, Any], device: str,
                  seen: dict[str, Arrays] | None = None) -> tuple[float, float]:
    """(text encoding, image program) seconds of one request; `seen` keeps each component's first inputs."""
    from dgate.core.generate import image_program
    from dgate.core.program import run_blocking
    from dgate.core.schedulers import SchedulerFactory
    from dgate.gpu_check.parity import denoise_params

    params = denoise_params(values)
    text_s, text = timed(lambda: engine_text(model, values["prompt"], params.negative_prompt), device)
    call = engine_call(model.spec, model.engines)

    def recording(component: str, inputs: Arrays) -> Arrays:
        if seen is not None:
            seen.setdefault(component, inputs)
        return call(component, inputs)

    schedulers = SchedulerFactory(dict(model.pipe.scheduler.config))
    program_s, _ = timed(lambda: run_blocking(image_program(model.spec, params, schedulers, text), recording), device)
    return text_s, program_s


def on_device(inputs: Arrays, device: str) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)).to(device) for name, value in inputs.items()}


def full_size_case(models: FullSizeModels, name: str, size: int, steps: int, guidance: float,
                   repeats: int) -> CaseResult:
    with warnings.catch_warnings():  # random FP16 weights may overflow: NaN pixels, cast warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        return _full_size_case(models, name, size, steps, guidance, repeats)


def _full_size_case(models: FullSizeModels, name: str, size: int, steps: int, guidance: float,
                    repeats: int) -> CaseResult:
    device = models.environment.device
    build_s, model = timed(lambda: models.get(name), device)
    values = _values(size, steps, guidance)
    warmup = values | {"num_inference_steps": WARMUP_STEPS}
    diffusers_seconds(model, warmup, device)
    diffusers_s = statistics.median(diffusers_seconds(model, values, device) for _ in range(repeats))
    seen: dict[str, Arrays] = {}
    dgate_seconds(model, warmup, device, seen)
    runs = [dgate_seconds(model, values, device) for _ in range(repeats)]
    text_s = statistics.median(run[0] for run in runs)
    program_s = statistics.median(run[1] for run in runs)
    denoiser, decoder = model.engines[model.spec.denoiser_component], model.engines["vae_decoder"]
    step_inputs, latent = on_device(seen[model.spec.denoiser_component], device), on_device(seen["vae_decoder"], device)
    step_s = median_seconds(lambda: denoiser.run(step_inputs), device, STEP_REPEATS, warmup=2)
    decode_s = median_seconds(lambda: decoder.run(latent), device, DECODE_REPEATS)
    overhead_s = (program_s - steps * step_s - decode_s) / steps
    values_out = {
        "size": size, "steps": steps, "precision": "fp16" if models.environment.on_gpu else "fp32",
        "denoiser_batch": int(next(iter(seen[model.spec.denoiser_component].values())).shape[0]),
        "build_s": build_s, "diffusers_s": diffusers_s, "dgate_s": text_s + program_s, "dgate_text_s": text_s,
        "dgate_program_s": program_s, "step_ms": step_s * 1000, "decode_ms": decode_s * 1000,
        "overhead_ms_per_step": overhead_s * 1000, "overhead_pct_of_step": 100 * overhead_s / step_s,
        "repeats": repeats,
    }
    figure = (f"diffusers {diffusers_s:.2f} s, D-Gate {text_s + program_s:.2f} s; step {step_s * 1000:.1f} ms, "
              f"overhead {overhead_s * 1000:.2f} ms/step ({100 * overhead_s / step_s:.1f}%)")
    engine = f"torch {values_out['precision']}"
    return CaseResult(SECTION, case_name(name, size, steps), engine, MEASURED, figure, values=values_out)
