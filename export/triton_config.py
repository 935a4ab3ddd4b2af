"""Render `config.pbtxt` files from the PipelineSpec with Triton's own ModelConfig protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dgate.core.families import family_of
from dgate.core.pipeline_spec import PipelineSpec, TextEncoderSpec
from dgate.core.served_pipeline import ServedPipeline
from dgate.core.tensors import (
    CANCEL_MODEL,
    CANCEL_OUTPUT,
    CANCEL_REQUEST_ID,
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUT,
    IMAGE_REQUEST_EXTRAS,
    LORA_CHECK_MODEL,
    LORA_INPUT,
    LORA_ROWS,
    PARTIAL_INDEX_OUTPUT,
    PARTIAL_OUTPUT,
    PIPELINE_MARKER_PARAMETER,
    PROGRESS_OUTPUT,
    STEPS_OUTPUT,
    TEXT_INPUTS,
    VIDEO_OUTPUT,
    TensorSpec,
    model_name,
    request_tensors,
)

# What the image denoiser takes besides the encoded prompt: every request value except the prompt text.
DENOISE_PARAMETERS = (*(t for t in ENSEMBLE_INPUTS if t.name != "prompt"), *IMAGE_REQUEST_EXTRAS)
# The image denoiser's answers: `images`; streaming, also progress and partial images before them.
STREAMING_OUTPUTS = (ENSEMBLE_OUTPUT, PROGRESS_OUTPUT, STEPS_OUTPUT, PARTIAL_OUTPUT, PARTIAL_INDEX_OUTPUT)
DENOISER_DESIGNS = ("async", "blocking")
TRITON_BACKENDS = ("python", "native")
ENGINES = ("onnxruntime", "torch", "tensorrt")
DEVICES = ("cpu", "gpu")
PROMPT_ROWS = 2  # [negative prompt, prompt]


@dataclass(frozen=True)
class ServingOptions:
    """How the repository is served; chosen at export time (`dgate export --help`).

    Each field refuses a value it does not know; `unservable` says which combinations cannot work.
    """

    # "python": components run ONNX Runtime on the CPU inside Python models (the CPU build of Triton);
    # "native": Triton's onnxruntime/tensorrt backends run them (the NGC image).
    triton_backend: str = "python"
    engine: str = "onnxruntime"  # "onnxruntime" | "torch" (Python backend) | "tensorrt" (GPU: Python backend or native)
    device: str = "cpu"  # where component models run: "cpu" | "gpu"
    # "async": the image denoiser is decoupled and one instance interleaves every request's steps
    # (asyncio + async BLS), streaming progress and partial images; the pipeline's ensemble is then
    # reachable over gRPC streaming only. "blocking": each instance runs one request's loop at a
    # time and the ensemble answers plain HTTP/gRPC infer calls; no streaming.
    denoiser: str = "async"
    # Each instance is a process with torch + diffusers (~250 MB PSS). Async: one serves all requests;
    # blocking: one request in flight per instance (their steps meet in the UNet's batcher).
    denoiser_instances: int = 1
    # Video requests run for seconds to minutes; one loop per instance (the UNet batches across them).
    video_denoiser_instances: int = 1
    component_instances: int = 1
    helper_instances: int = 1  # tokenizer, dgate_cancel and dgate_lora: little work per request
    max_queue_delay_us: int = 100  # CPU: UNet cost is linear in batch, so waiting buys nothing (dgate bench)
    onnx_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    # Adapters by weight refit in the text encoders and the denoiser, where the Python backend serves
    # the components (a native repository serves none).
    lora: bool = True

    @property
    def serves_lora(self) -> bool:
        return self.lora and self.triton_backend == "python"

    def __post_init__(self) -> None:
        for field, value, known in (("triton_backend", self.triton_backend, TRITON_BACKENDS),
                                    ("engine", self.engine, ENGINES), ("device", self.device, DEVICES),
                                    ("denoiser", self.denoiser, DENOISER_DESIGNS)):
            if value not in known:
                raise ValueError(f"{field} must be one of {', '.join(known)}, got {value!r}")

    @property
    def streams(self) -> bool:
        return self.denoiser == "async"


TORCH_QUANTIZED = "--quantized serves dgate calibrate's ONNX graphs: use --engine onnxruntime or tensorrt"


def unservable(options: ServingOptions) -> str | None:
    """Why `options` cannot be served as asked, or None: the one place for these rules (`dgate export`
    refuses them before loading a model, export_pipeline raises them). An option that would be
    silently ignored counts as unservable. Worded with `dgate export`'s flags."""
    python = options.triton_backend == "python"
    if options.engine == "tensorrt" and options.device != "gpu":
        return "TensorRT engines run on GPU instances only (Triton refuses them on the CPU): add --device gpu"
    if options.engine == "torch" and not python:
        return "the torch engine runs in the Python backend: leave --triton-backend python"
    if python and options.device == "gpu" and options.engine == "onnxruntime" and options.lora:
        return ("LoRA on GPU instances needs --engine torch or tensorrt: ONNX Runtime's CUDA sessions take no weights "
                "updated in place (or pass --no-lora)")
    if not python and options.onnx_threads:
        return ("--onnx-threads sets the ONNX Runtime threads of Python-backend components; native models do not "
                "read it: leave it at 0 with --triton-backend native")
    counts = (("--denoiser-instances", options.denoiser_instances),
              ("--video-denoiser-instances", options.video_denoiser_instances),
              ("--component-instances", options.component_instances),
              ("helper_instances", options.helper_instances))
    for flag, count in counts:
        if count < 1:  # Triton refuses an instance group with count < 1
            return f"{flag} must be at least 1, got {count}"
    for flag, value in (("--max-queue-delay-us", options.max_queue_delay_us), ("--onnx-threads", options.onnx_threads)):
        if value < 0:
            return f"{flag} must be 0 or more, got {value}"
    return None


def takes_lora(spec: PipelineSpec, component: str, options: ServingOptions) -> bool:
    # Video pipelines take no adapters yet (their denoiser passes no per-row `lora` to the UNet).
    adaptable = (*(e.component for e in spec.text_encoders), spec.denoiser_component)
    return options.serves_lora and not spec.capabilities.is_video and component in adaptable


def _add_tensors(field, tensors: tuple[TensorSpec, ...]) -> None:
    for tensor in tensors:
        added = field.add(name=tensor.name, data_type=mc.DataType.Value(tensor.dtype), dims=list(tensor.dims))
        if tensor.optional:
            added.optional = True


def _python_model(name: str, inputs, outputs, max_batch_size: int, instances: int,
                  parameters: dict[str, str], gpu: bool = False) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, outputs)
    if gpu:  # `count` instances on each visible GPU (Triton's KIND_GPU without `gpus`)
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=instances)
    else:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def component_config(spec: PipelineSpec, component: str, options: ServingOptions) -> mc.ModelConfig:
    """A UNet/transformer, text encoder or VAE model: batched, so concurrent requests share runs."""
    inputs, outputs = family_of(spec).component_io(spec, component)
    rows_per_image = 1 if component.startswith("vae") else PROMPT_ROWS  # CFG: uncond + cond
    max_batch_size = spec.limits.max_images * rows_per_image
    if component.startswith("vae") and spec.capabilities.is_video:  # a 2-D VAE decodes a video's frames as rows
        max_batch_size = max(max_batch_size, spec.limits.max_num_frames)
    name = model_name(spec.name, component)
    if options.triton_backend == "python":
        parameters = {"engine": options.engine, "component": component, "onnx_threads": str(options.onnx_threads)}
        if takes_lora(spec, component, options):
            inputs = (*inputs, LORA_ROWS)
            parameters["lora_component"] = component
        if options.device == "gpu":  # GPU tensors stay on the GPU across BLS, not copied to the host first
            parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
        config = _python_model(name, inputs, outputs, max_batch_size, options.component_instances, parameters,
                               gpu=options.device == "gpu")
    else:
        native = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
        platform, filename = native[options.engine]
        config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size,
                                default_model_filename=filename)
        _add_tensors(config.input, inputs)
        _add_tensors(config.output, outputs)
        kind = mc.ModelInstanceGroup.KIND_GPU if options.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(kind=kind, count=options.component_instances)
        if options.engine == "tensorrt":  # the native backend captures CUDA graphs for the shapes it meets
            config.optimization.cuda.graphs = True
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    return config


def _token_rows(encoder: TextEncoderSpec) -> tuple[tuple[int, ...], tuple[str, ...]]:
    length = encoder.inputs[0]
    return (PROMPT_ROWS, *length.dims), length.axes


# The request's `lora` once per prompt row, for the text encoders' batched `lora` input.
LORA_PROMPT_ROWS = TensorSpec("lora_rows", "TYPE_STRING", (PROMPT_ROWS, 1))


def tokenize_outputs(spec: PipelineSpec) -> tuple[TensorSpec, ...]:
    """`<encoder>_input_ids` and `<encoder>_attention_mask`, [2, length] for every text encoder, and
    `lora_rows`."""
    tensors: tuple[TensorSpec, ...] = (LORA_PROMPT_ROWS,)
    for encoder in spec.text_encoders:
        dims, axes = _token_rows(encoder)
        tensors += (TensorSpec(f"{encoder.component}_input_ids", "TYPE_INT64", dims, axes),
                    TensorSpec(f"{encoder.component}_attention_mask", "TYPE_INT64", dims, axes))
    return tensors


def encoded_prompt_inputs(spec: PipelineSpec) -> tuple[TensorSpec, ...]:
    """What the denoiser receives of the prompt: each encoder's outputs and its token mask."""
    tensors: tuple[TensorSpec, ...] = ()
    for encoder in spec.text_encoders:
        dims, axes = _token_rows(encoder)
        # Rows stay -1 here: the encoder model returns them with its batch dimension.
        tensors += tuple(TensorSpec(f"{encoder.component}_{t.name}", t.dtype, (-1, *t.dims), ("rows", *t.axes))
                         for t in encoder.outputs)
        tensors += (TensorSpec(f"{encoder.component}_attention_mask", "TYPE_INT64", dims, axes),)
    return tensors


def tokenize_config(spec: PipelineSpec, options: ServingOptions) -> mc.ModelConfig:
    inputs = tuple(t for t in ENSEMBLE_INPUTS if t.name in TEXT_INPUTS)
    return _python_model(model_name(spec.name, "tokenize"), inputs, tokenize_outputs(spec), max_batch_size=0,
                         instances=options.helper_instances, parameters={})


def denoiser_config(spec: PipelineSpec, options: ServingOptions) -> mc.ModelConfig:
    """The image denoiser: the whole request after the text encoders (VAE encoder for edits, the loop,
    the VAE decoder) through BLS. Async: decoupled, streaming (see async_image_denoiser_model)."""
    outputs = STREAMING_OUTPUTS if options.streams else (ENSEMBLE_OUTPUT,)
    config = _python_model(
        model_name(spec.name, "denoiser"), (*encoded_prompt_inputs(spec), *DENOISE_PARAMETERS), outputs,
        max_batch_size=0, instances=options.denoiser_instances,
        parameters={"lora": str(options.serves_lora).lower()},
        # On a GPU the loop's tensors live there (dgate.core.device); its inputs still arrive on the host.
        gpu=options.device == "gpu" and options.triton_backend == "python",
    )
    config.model_transaction_policy.decoupled = options.streams
    return config


def video_denoiser_config(spec: PipelineSpec, options: ServingOptions) -> mc.ModelConfig:
    """Decoupled: one `progress` response per step, then `video` (see video_denoiser_model)."""
    config = _python_model(
        model_name(spec.name, "denoiser"),
        (*encoded_prompt_inputs(spec), *request_tensors(spec.capabilities.task, spec.capabilities.takes_image)),
        (VIDEO_OUTPUT, PROGRESS_OUTPUT),
        max_batch_size=0, instances=options.video_denoiser_instances, parameters={},
    )
    config.model_transaction_policy.decoupled = True
    return config


def cancel_config(options: ServingOptions) -> mc.ModelConfig:
    """`dgate_cancel`, one per repository: request ids that running denoisers must stop."""
    return _python_model(CANCEL_MODEL, (TensorSpec(CANCEL_REQUEST_ID, "TYPE_STRING", (1,)),),
                         (TensorSpec(CANCEL_OUTPUT, "TYPE_BOOL", (1,)),), max_batch_size=0,
                         instances=options.helper_instances, parameters={})


def lora_config(options: ServingOptions) -> mc.ModelConfig:
    """`dgate_lora`, one per repository: checks a pipeline's adapters against its weight maps (the
    LoRA API's control path; one model rather than one per pipeline saves a ~68 MB process each)."""
    return _python_model(
        LORA_CHECK_MODEL,
        (TensorSpec("pipeline", "TYPE_STRING", (1,)), TensorSpec(LORA_INPUT, "TYPE_STRING", (1,))),
        (TensorSpec("report", "TYPE_STRING", (1,)),),
        max_batch_size=0, instances=options.helper_instances, parameters={},
    )


def ensemble_config(spec: PipelineSpec, options: ServingOptions | None = None) -> mc.ModelConfig:
    """tokenize -> each text encoder -> denoiser; one request in, images (or a video) out.

    The denoiser runs the rest through BLS. When it is decoupled (async images, video), every response
    it sends (progress, partial images, then the result) is the ensemble's, over gRPC streaming.
    """
    options = options or ServingOptions()
    video = spec.capabilities.is_video
    config = mc.ModelConfig(name=spec.name, platform="ensemble", max_batch_size=0)
    request = request_tensors(spec.capabilities.task, spec.capabilities.takes_image)
    outputs = (VIDEO_OUTPUT, PROGRESS_OUTPUT) if video else STREAMING_OUTPUTS if options.streams else (ENSEMBLE_OUTPUT,)
    _add_tensors(config.input, request)
    _add_tensors(config.output, outputs)
    steps = config.ensemble_scheduling.step

    def step(component: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
        steps.add(model_name=model_name(spec.name, component), model_version=-1,
                  input_map=inputs, output_map=outputs)

    serves_lora = options.serves_lora and not video
    if spec.text_encoders:
        step("tokenize", {name: name for name in TEXT_INPUTS},
             {t.name: f"_{t.name}" for t in tokenize_outputs(spec) if serves_lora or t != LORA_PROMPT_ROWS})
    lora = {LORA_INPUT: f"_{LORA_PROMPT_ROWS.name}"} if serves_lora else {}
    for encoder in spec.text_encoders:
        step(encoder.component,
             {t.name: f"_{encoder.component}_{t.name}" for t in encoder.inputs} | lora,
             {t.name: f"_{encoder.component}_{t.name}" for t in encoder.outputs})
    denoiser_inputs = request if video else (t for t in ENSEMBLE_INPUTS + IMAGE_REQUEST_EXTRAS if t.name != "prompt")
    step("denoiser",
         {t.name: f"_{t.name}" for t in encoded_prompt_inputs(spec)} | {t.name: t.name for t in denoiser_inputs},
         {t.name: t.name for t in outputs})
    return _with_parameters(config, spec, options)


def _with_parameters(config: mc.ModelConfig, spec: PipelineSpec, options: ServingOptions) -> mc.ModelConfig:
    """The pipeline marker, its limits and capabilities and whether it streams, read back by the frontend."""
    served = ServedPipeline(spec.limits, spec.capabilities, streams=options.streams and not spec.capabilities.is_video)
    parameters = {PIPELINE_MARKER_PARAMETER: "true"} | served.to_parameters()
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)
