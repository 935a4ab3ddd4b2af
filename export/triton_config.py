"""Render `config.pbtxt` files from the PipelineSpec with Triton's own ModelConfig protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tensors import (
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUT,
    PIPELINE_FAMILY_PARAMETER,
    PIPELINE_MARKER_PARAMETER,
    TensorSpec,
)

GENERATION_PARAMETERS = tuple(t for t in ENSEMBLE_INPUTS if t.name not in ("prompt", "negative_prompt"))


@dataclass(frozen=True)
class ServingOptions:
    """How the repository is served; chosen at export time (`dgate export --help`)."""

    triton_backend: str = "python"  # "python" (CPU build, ORT/TensorRT inside Python models) | "native"
    engine: str = "onnxruntime"  # "onnxruntime" | "tensorrt"
    device: str = "cpu"  # where native component models run: "cpu" | "gpu"
    denoiser_instances: int = 4  # concurrent requests whose steps can share one UNet batch
    component_instances: int = 1
    max_queue_delay_us: int = 100  # CPU: UNet cost is linear in batch, so waiting buys nothing (dgate bench)
    onnx_threads: int = 0  # 0 = ONNX Runtime's default (all cores)


def model_name(pipeline: str, component: str) -> str:
    return f"{pipeline}_{component}"


def _add_tensors(field, tensors: tuple[TensorSpec, ...]) -> None:
    for tensor in tensors:
        field.add(name=tensor.name, data_type=mc.DataType.Value(tensor.dtype), dims=list(tensor.dims))


def _python_model(name: str, inputs, outputs, max_batch_size: int, instances: int,
                  parameters: dict[str, str]) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def component_config(spec: PipelineSpec, component: str, options: ServingOptions) -> mc.ModelConfig:
    """A UNet/transformer, text encoder or VAE model: batched, so concurrent requests share runs."""
    inputs, outputs = spec.component_io(component)
    max_batch_size = spec.limits.max_images * (2 if component in ("text_encoder", spec.denoiser_component) else 1)
    name = model_name(spec.name, component)
    if options.triton_backend == "python":
        config = _python_model(name, inputs, outputs, max_batch_size, options.component_instances,
                               {"engine": options.engine, "onnx_threads": str(options.onnx_threads)})
    else:
        native = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
        platform, filename = native[options.engine]
        config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size,
                                default_model_filename=filename)
        _add_tensors(config.input, inputs)
        _add_tensors(config.output, outputs)
        kind = mc.ModelInstanceGroup.KIND_GPU if options.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(kind=kind, count=options.component_instances)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    return config


def tokenize_config(spec: PipelineSpec) -> mc.ModelConfig:
    rows = (2, spec.text_max_length)  # negative prompt, prompt
    return _python_model(
        model_name(spec.name, "tokenize"),
        ENSEMBLE_INPUTS[:2],
        (TensorSpec("input_ids", "TYPE_INT64", rows), TensorSpec("attention_mask", "TYPE_INT64", rows)),
        max_batch_size=0, instances=2, parameters={},
    )


def denoiser_config(spec: PipelineSpec, options: ServingOptions) -> mc.ModelConfig:
    inputs = (
        TensorSpec("prompt_embeds", "TYPE_FP32", (-1, spec.text_max_length, spec.text_hidden_size)),
        TensorSpec("prompt_attention_mask", "TYPE_INT64", (-1, spec.text_max_length)),
        *GENERATION_PARAMETERS,
    )
    outputs = (TensorSpec("latents", "TYPE_FP32", (-1, spec.latent_channels, -1, -1)),)
    return _python_model(
        model_name(spec.name, "denoiser"), inputs, outputs, max_batch_size=0,
        instances=options.denoiser_instances,
        parameters={"denoiser_model": model_name(spec.name, spec.denoiser_component)},
    )


def postprocess_config(spec: PipelineSpec) -> mc.ModelConfig:
    return _python_model(
        model_name(spec.name, "postprocess"),
        (TensorSpec("image", "TYPE_FP32", (-1, 3, -1, -1)),),
        (ENSEMBLE_OUTPUT,),
        max_batch_size=0, instances=2, parameters={},
    )


def ensemble_config(spec: PipelineSpec) -> mc.ModelConfig:
    """tokenize -> text_encoder -> denoiser -> vae_decoder -> postprocess, one request in, images out."""
    config = mc.ModelConfig(name=spec.name, platform="ensemble", max_batch_size=0)
    _add_tensors(config.input, ENSEMBLE_INPUTS)
    _add_tensors(config.output, (ENSEMBLE_OUTPUT,))
    steps = config.ensemble_scheduling.step

    def step(component: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
        steps.add(model_name=model_name(spec.name, component), model_version=-1,
                  input_map=inputs, output_map=outputs)

    step("tokenize", {"prompt": "prompt", "negative_prompt": "negative_prompt"},
         {"input_ids": "_input_ids", "attention_mask": "_attention_mask"})
    text_inputs = {"input_ids": "_input_ids"}
    if spec.uses_attention_mask:
        text_inputs["attention_mask"] = "_attention_mask"
    step("text_encoder", text_inputs, {"last_hidden_state": "_prompt_embeds"})
    step("denoiser",
         {"prompt_embeds": "_prompt_embeds", "prompt_attention_mask": "_attention_mask"}
         | {t.name: t.name for t in GENERATION_PARAMETERS},
         {"latents": "_latents"})
    step("vae_decoder", {"latent": "_latents"}, {"image": "_image"})
    step("postprocess", {"image": "_image"}, {ENSEMBLE_OUTPUT.name: ENSEMBLE_OUTPUT.name})
    parameters = {PIPELINE_MARKER_PARAMETER: "true", PIPELINE_FAMILY_PARAMETER: spec.family}
    for key, value in (parameters | spec.limits.to_parameters()).items():
        config.parameters[key].string_value = value
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
