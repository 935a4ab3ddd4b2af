"""The diffusers pipeline itself, called for one D-Gate request: what served images must equal.

One place for the reference call (tests, `dgate bench`), and for running D-Gate's own loop in
process on the pipeline's PyTorch modules (the core's bit-exactness check).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgate.core.denoise import denoise
from dgate.core.device import as_tensor
from dgate.core.families import family_of
from dgate.core.families.base import TextOutputs
from dgate.core.images import to_uint8_images
from dgate.core.lora.adapter_file import adapter_file
from dgate.core.lora.request import adapters_dir, decode_adapters, resolve_adapter
from dgate.core.params import DenoiseParams
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.schedulers import SchedulerFactory, build_scheduler
from dgate.core.tokenization import PromptTokenizer


def diffusers_call_kwargs(pipe: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """`pipe(**kwargs)` arguments equivalent to a D-Gate request (ensemble input values)."""
    accepted = inspect.signature(type(pipe).__call__).parameters
    kwargs: dict[str, Any] = {
        "prompt": values["prompt"],
        # D-Gate's "" is the pipeline's default (None for most: SDXL then zeroes the negative
        # embeddings, Flux skips true CFG; "" for PixArt).
        "negative_prompt": values["negative_prompt"] or accepted["negative_prompt"].default,
        "num_images_per_prompt": values["num_images"],
        "num_inference_steps": values["num_inference_steps"],
        "guidance_scale": values["guidance_scale"],
        "height": values["height"],
        "width": values["width"],
        "generator": torch.Generator().manual_seed(int(values["seed"])),
        "output_type": "np",
    }
    if values.get("max_sequence_length") and "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = values["max_sequence_length"]
    if "true_cfg_scale" in accepted:
        kwargs["true_cfg_scale"] = values.get("true_cfg_scale", 1.0)
    for flag in ("use_resolution_binning", "clean_caption"):  # PixArt: not applied by D-Gate
        if flag in accepted:
            kwargs[flag] = False
    return kwargs


@contextmanager
def loaded_adapters(pipe: Any, lora: str) -> Iterator[None]:
    """The request's adapters loaded the diffusers way (`load_lora_weights` + `set_adapters`), then
    unloaded. Pipelines without a LoRA loader (PixArt) load into the transformer with peft."""
    refs = decode_adapters(lora)
    if not refs:
        yield
        return
    files = [adapter_file(resolve_adapter(adapters_dir(), ref.path)) for ref in refs]
    if not hasattr(pipe, "load_lora_weights"):
        with _peft_adapters(pipe, files, [ref.scale for ref in refs]):
            yield
        return
    names = [f"dgate_{index}" for index in range(len(refs))]
    for name, file in zip(names, files, strict=True):
        pipe.load_lora_weights(str(file), adapter_name=name)
    pipe.set_adapters(names, [ref.scale for ref in refs])
    try:
        yield
    finally:
        pipe.unload_lora_weights()


@contextmanager
def _peft_adapters(pipe: Any, files: list[Path], scales: list[float]) -> Iterator[None]:
    """peft's own LoRA layers in a copy of the transformer (PixArt: diffusers has no loader for it)."""
    import copy
    import json

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    original = pipe.transformer
    model = copy.deepcopy(original)
    names = []
    for index, (file, scale) in enumerate(zip(files, scales, strict=True)):
        with safe_open(str(file), "pt") as handle:
            metadata = json.loads((handle.metadata() or {})["lora_adapter_metadata"])
        config = {k.removeprefix("transformer."): v for k, v in metadata.items() if k.startswith("transformer.")}
        name = f"dgate_{index}"
        inject_adapter_in_model(LoraConfig(**config), model, adapter_name=name)
        set_peft_model_state_dict(model, {k.removeprefix("transformer."): v for k, v in load_file(str(file)).items()},
                                  adapter_name=name)
        for module in model.modules():
            if hasattr(module, "scaling") and name in module.scaling:
                module.scaling[name] *= scale
        names.append(name)
    for module in model.modules():
        if hasattr(module, "set_adapter") and hasattr(module, "scaling"):
            module.set_adapter(names)
    pipe.transformer = model
    try:
        yield
    finally:
        pipe.transformer = original


def diffusers_images(pipe: Any, values: Mapping[str, Any]) -> np.ndarray:
    """The pipeline's own output for the request as uint8 [N, H, W, 3], with the request's scheduler
    and adapters."""
    return _to_uint8(_run_pipeline(pipe, values, diffusers_call_kwargs(pipe, values)))


def _to_uint8(images: Any) -> np.ndarray:
    # diffusers' numpy output is float [0, 1]; its PIL conversion is (x * 255).round().
    return (np.asarray(images) * 255).round().astype(np.uint8)


def _run_pipeline(pipe: Any, values: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
    """`pipe(**kwargs).images` with the request's scheduler and adapters."""
    scheduler = values.get("scheduler", "default")
    original = pipe.scheduler
    if scheduler != "default":
        pipe.scheduler = build_scheduler(scheduler, dict(original.config))
    try:
        pipe.set_progress_bar_config(disable=True)
        with loaded_adapters(pipe, values.get("lora", "")):
            return pipe(**kwargs).images
    finally:
        pipe.scheduler = original


# Edit pipelines whose decode drops the VAE's shift_factor (latents / scaling_factor only), unlike
# their own encode and every other pipeline of the family: diffusers issue #13611 (issue 1). D-Gate
# decodes as the rest of the family does, so the reference takes the latents and decodes them so too.
DECODE_WITHOUT_SHIFT = ("StableDiffusion3InpaintPipeline",)


def diffusers_edit(pipe: Any, values: Mapping[str, Any], image: np.ndarray, mask: np.ndarray | None = None
                   ) -> np.ndarray:
    """The family's own img2img pipeline (no mask) or inpaint pipeline (mask: uint8 [H, W], 255 =
    repaint), built from the text-to-image pipeline's components, for the request (image: uint8
    [H, W, 3], strength from values["strength"]) as uint8 [N, H, W, 3]."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
    from PIL import Image

    auto = AutoPipelineForImage2Image if mask is None else AutoPipelineForInpainting
    edit_pipe = auto.from_pipe(pipe)
    # A scheduler of its own: from_pipe shares the text-to-image pipeline's (stateful) one.
    edit_pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    accepted = inspect.signature(type(edit_pipe).__call__).parameters
    kwargs = {k: v for k, v in diffusers_call_kwargs(edit_pipe, values).items() if k in accepted}
    kwargs |= {"image": Image.fromarray(image), "strength": float(values["strength"])}
    if mask is not None:
        kwargs["mask_image"] = Image.fromarray(mask).convert("L")
    if type(edit_pipe).__name__ not in DECODE_WITHOUT_SHIFT:
        images = _to_uint8(_run_pipeline(edit_pipe, values, kwargs))
    else:
        latents = _run_pipeline(edit_pipe, values, kwargs | {"output_type": "latent"})
        vae = edit_pipe.vae
        with torch.inference_mode():
            decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
        images = _to_uint8(edit_pipe.image_processor.postprocess(decoded, output_type="np"))
    if mask is None:
        return images
    # D-Gate keeps the unmasked pixels of the input: diffusers' own overlay (what its inpaint pipelines
    # do with padding_mask_crop) with the binarized mask.
    binary = Image.fromarray(np.where(mask >= 128, 255, 0).astype(np.uint8))
    return np.stack([np.asarray(edit_pipe.image_processor.apply_overlay(binary, Image.fromarray(image),
                                                                        Image.fromarray(generated)))
                     for generated in images])


def diffusers_video(pipe: Any, values: Mapping[str, Any], image: np.ndarray | None = None) -> np.ndarray:
    """The video pipeline's own output for the request as uint8 [1, F, H, W, 3]."""
    from PIL import Image

    accepted = inspect.signature(type(pipe).__call__).parameters
    kwargs: dict[str, Any] = {
        "num_frames": values["num_frames"], "num_inference_steps": values["num_inference_steps"],
        "height": values["height"], "width": values["width"], "output_type": "np",
        "generator": torch.Generator().manual_seed(int(values["seed"])),
        "decode_chunk_size": values.get("decode_chunk_size") or accepted["decode_chunk_size"].default,
    }
    if "image" in accepted:  # image to video (SVD)
        if image is None:
            raise ValueError(f"{type(pipe).__name__} makes video from an image: pass one")
        kwargs |= {"image": Image.fromarray(image), "max_guidance_scale": values["guidance_scale"],
                   "fps": values["fps"], "motion_bucket_id": values["motion_bucket_id"],
                   "noise_aug_strength": values["noise_aug_strength"]}
    else:
        kwargs |= {"prompt": values["prompt"], "negative_prompt": values["negative_prompt"] or None,
                   "guidance_scale": values["guidance_scale"]}
    scheduler, original = values.get("scheduler", "default"), pipe.scheduler
    if scheduler != "default":
        pipe.scheduler = build_scheduler(scheduler, dict(original.config))
    try:
        pipe.set_progress_bar_config(disable=True)
        frames = pipe(**kwargs).frames
    finally:
        pipe.scheduler = original
    return (np.asarray(frames) * 255).round().astype(np.uint8)


def torch_text_outputs(pipe: Any, spec: PipelineSpec, prompt: str, negative_prompt: str,
                       max_sequence_length: int = 0) -> TextOutputs:
    """What the tokenize + text encoder models produce, computed with the PyTorch encoders."""
    from dgate.core.component_modules import TextEncoderWrapper

    t5_length = max_sequence_length or spec.limits.default_max_sequence_length
    text: TextOutputs = {}
    for encoder in spec.text_encoders:
        tokenizer = getattr(pipe, encoder.tokenizer)
        ids, mask = PromptTokenizer.from_transformers(tokenizer, encoder.pad_token_id)(
            [negative_prompt, prompt], t5_length if encoder.variable_length else encoder.max_length)
        wrapper = TextEncoderWrapper(getattr(pipe, encoder.component), encoder).eval()
        # One prompt at a time, as diffusers' encode_prompt does: a batched matmul can round differently.
        with torch.inference_mode():
            rows = [wrapper(torch.from_numpy(ids[i : i + 1]), torch.from_numpy(mask[i : i + 1])) for i in range(2)]
        names = [t.name for t in encoder.outputs]
        text[encoder.component] = {name: np.concatenate([row[k].numpy() for row in rows])
                                   for k, name in enumerate(names)}
        text[encoder.component]["attention_mask"] = mask
    return text


def torch_component_call(pipe: Any, spec: PipelineSpec) -> Any:
    """A `ComponentCall` on the pipeline's PyTorch modules (the exported wrappers, in process)."""
    from dgate.core.component_modules import component_module

    modules: dict[str, Any] = {}

    def call(component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if component not in modules:
            modules[component] = component_module(pipe, spec, component)
        io = family_of(spec).component_io(spec, component)
        with torch.inference_mode():
            outputs = modules[component](*(as_tensor(inputs[t.name]) for t in io[0]))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {t.name: out.numpy() for t, out in zip(io[1], outputs, strict=True)}

    return call


def torch_loop_video(pipe: Any, spec: PipelineSpec, values: Mapping[str, Any], image: np.ndarray | None = None
                     ) -> np.ndarray:
    """D-Gate's video path (`generate_video`) run in process on the pipeline's PyTorch modules."""
    from dgate.core.video import generate_video

    params = DenoiseParams(**{k: values[k] for k in DenoiseParams.__dataclass_fields__ if k in values})
    text = torch_text_outputs(pipe, spec, values["prompt"], params.negative_prompt) if spec.text_encoders else {}
    return generate_video(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), text, image,
                          torch_component_call(pipe, spec))


def _denoise_params(values: Mapping[str, Any]) -> DenoiseParams:
    return DenoiseParams(**{k: values[k] for k in DenoiseParams.__dataclass_fields__ if k in values})


def torch_loop_edit(pipe: Any, spec: PipelineSpec, values: Mapping[str, Any], image: np.ndarray,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """D-Gate's image program for an edit (img2img, or inpainting with `mask`) run in process on the
    pipeline's PyTorch modules: VAE encoder, denoiser and VAE decoder as the exported wrappers."""
    from dgate.core.edit import EditSource
    from dgate.core.generate import image_program
    from dgate.core.program import run_blocking

    params = _denoise_params(values)
    text = torch_text_outputs(pipe, spec, values["prompt"], params.negative_prompt, params.max_sequence_length)
    program = image_program(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), text,
                            EditSource(image, mask))
    return run_blocking(program, torch_component_call(pipe, spec))


def torch_loop_images(pipe: Any, spec: PipelineSpec, values: Mapping[str, Any]) -> np.ndarray:
    """D-Gate's loop run in process on the pipeline's PyTorch modules, decoded by its VAE."""
    from dgate.core.component_modules import VaeDecoderWrapper

    params = DenoiseParams(**{k: values[k] for k in DenoiseParams.__dataclass_fields__ if k in values})
    text = torch_text_outputs(pipe, spec, values["prompt"], params.negative_prompt, params.max_sequence_length)
    module = family_of(spec).denoiser_module(pipe, spec).eval()
    names = [t.name for t in family_of(spec).denoiser_inputs(spec)]

    def call(component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"noise_pred": module(*(as_tensor(inputs[name]) for name in names)).numpy()}

    latents = denoise(spec, params, SchedulerFactory(dict(pipe.scheduler.config)), text, call)
    decoder = VaeDecoderWrapper(pipe.vae, spec.vae_scaling_factor, spec.vae_shift_factor).eval()
    with torch.inference_mode():
        decoded = decoder(torch.from_numpy(latents)).numpy()
    return to_uint8_images(decoded)
