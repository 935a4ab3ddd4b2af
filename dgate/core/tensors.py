"""Tensor descriptions shared by export, config rendering, the Triton models and the frontend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Triton config dtype name -> numpy dtype; BYTES tensors travel as numpy object arrays.
TRITON_TO_NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_STRING": np.object_,
}

# Names of the dynamic axes (the -1 dims). Export, TensorRT profiles and sample inputs turn them into
# concrete sizes through `concrete_shape`, so what an axis means is written once.
HEIGHT, WIDTH = "height", "width"  # pixels
LATENT_HEIGHT, LATENT_WIDTH = "latent_height", "latent_width"
IMAGE_TOKENS = "image_tokens"  # packed 2x2 latent patches (Flux)
TEXT_LENGTH = "text_length"  # the variable-length (T5) prompt tokens
DENOISER_TEXT_LENGTH = "denoiser_text_length"  # the prompt length the denoiser model sees (SD3: 77 + T5)
FRAMES = "frames"  # video frames (latent frames = frames)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: Triton dtype and dims *without* the batch dimension (-1 = dynamic).

    `axes` names each -1 dim in order (see the axis names above).
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    axes: tuple[str, ...] = ()
    optional: bool = False  # a request may leave it out (Triton's `optional: true`)

    def __post_init__(self) -> None:
        if len(self.axes) != sum(1 for d in self.dims if d == -1):
            raise ValueError(f"{self.name}: name every dynamic dim of {self.dims}, got axes {self.axes}")

    @property
    def numpy_dtype(self) -> type:
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def client_dtype(self) -> str:
        """The datatype string tritonclient uses ("FP32", "BYTES", ...)."""
        return "BYTES" if self.dtype == "TYPE_STRING" else self.dtype.removeprefix("TYPE_")

    def concrete_shape(self, batch: int, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """(batch, *dims) with each dynamic dim replaced by `sizes[axis]`."""
        names = iter(self.axes)
        return (batch, *(sizes[next(names)] if d == -1 else d for d in self.dims))

    def dynamic_axes(self) -> dict[int, str]:
        """ONNX dynamic_axes entry: the batch and every named axis."""
        names = iter(self.axes)
        return {0: "batch"} | {i + 1: next(names) for i, d in enumerate(self.dims) if d == -1}


def scalar(name: str, dtype: str) -> TensorSpec:
    return TensorSpec(name, dtype, (1,))


# The request contract of every pipeline ensemble: one Triton request carries all `num_images`.
ENSEMBLE_INPUTS = (
    scalar("prompt", "TYPE_STRING"),
    scalar("negative_prompt", "TYPE_STRING"),
    scalar("num_images", "TYPE_INT32"),
    scalar("num_inference_steps", "TYPE_INT32"),
    scalar("guidance_scale", "TYPE_FP32"),
    scalar("seed", "TYPE_INT64"),
    scalar("height", "TYPE_INT32"),
    scalar("width", "TYPE_INT32"),
    scalar("scheduler", "TYPE_STRING"),
    scalar("max_sequence_length", "TYPE_INT32"),  # T5 prompt length; 0 = the pipeline's default
    scalar("true_cfg_scale", "TYPE_FP32"),  # Flux: classifier-free guidance with a negative prompt
    scalar("lora", "TYPE_STRING"),  # the request's adapters (dgate.core.lora.request); "" = none
)
ENSEMBLE_OUTPUT = TensorSpec("images", "TYPE_UINT8", (-1, -1, -1, 3), ("images", HEIGHT, WIDTH))  # N x H x W x RGB
# Video pipelines take these as well (and i2v pipelines the conditioning image, RGB as decoded).
VIDEO_INPUTS = (
    scalar("num_frames", "TYPE_INT32"),
    scalar("fps", "TYPE_INT32"),
    scalar("motion_bucket_id", "TYPE_INT32"),  # SVD's motion conditioning
    scalar("noise_aug_strength", "TYPE_FP32"),  # SVD: noise added to the conditioning image
    scalar("decode_chunk_size", "TYPE_INT32"),  # frames the VAE decodes at once; 0 = the pipeline's default
)
CONDITIONING_IMAGE = TensorSpec("image", "TYPE_UINT8", (-1, -1, 3), ("image_height", "image_width"))
# A video request streams one response per denoising step (`progress` in 0..1), then the frames.
VIDEO_OUTPUT = TensorSpec("video", "TYPE_UINT8", (-1, -1, -1, -1, 3), ("videos", FRAMES, HEIGHT, WIDTH))
PROGRESS_OUTPUT = scalar("progress", "TYPE_FP32")
# Image pipelines: what an edit adds (img2img: the image; inpainting: the mask too, 255 = repaint, at the
# image's size) and what a streaming client asks for (progress after every step, partial images).
# All optional: a plain text-to-image request sends none of them.
EDIT_IMAGE = TensorSpec("image", "TYPE_UINT8", (-1, -1, 3), ("image_height", "image_width"), optional=True)
EDIT_MASK = TensorSpec("mask", "TYPE_UINT8", (-1, -1), ("image_height", "image_width"), optional=True)
STRENGTH = TensorSpec("strength", "TYPE_FP32", (1,), optional=True)
PARTIAL_IMAGES = TensorSpec("partial_images", "TYPE_INT32", (1,), optional=True)  # previews wanted (0..3)
STREAM_PROGRESS = TensorSpec("stream_progress", "TYPE_BOOL", (1,), optional=True)  # a response per step
IMAGE_REQUEST_EXTRAS = (EDIT_IMAGE, EDIT_MASK, STRENGTH, PARTIAL_IMAGES, STREAM_PROGRESS)
# A streaming image pipeline answers with progress and partial images (with their index), then `images`.
PARTIAL_OUTPUT = TensorSpec("partial_image", "TYPE_UINT8", (-1, -1, -1, 3), ("images", HEIGHT, WIDTH))
PARTIAL_INDEX_OUTPUT = scalar("partial_image_index", "TYPE_INT32")
STEPS_OUTPUT = TensorSpec("steps", "TYPE_INT32", (2,))  # with `progress`: (steps done, steps in all)
MAX_PARTIAL_IMAGES = 3  # OpenAI's limit
# The inputs the tokenizer model takes; the rest go to the denoiser.
TEXT_INPUTS = ("prompt", "negative_prompt", "max_sequence_length", "lora")
# The per-row adapters input of the components that take LoRA (text encoders, the denoiser).
LORA_INPUT = "lora"
LORA_ROWS = TensorSpec(LORA_INPUT, "TYPE_STRING", (1,))
# The repository's one adapter-check model (the LoRA API's control path): (pipeline, lora) -> report.
LORA_CHECK_MODEL = "dgate_lora"

def model_name(pipeline: str, component: str) -> str:
    """The Triton model serving one component (or step) of a pipeline."""
    return f"{pipeline}_{component}"


# The repository's one cancellation model: (request_id) -> cancelled (dgate.core.cancellation).
CANCEL_MODEL = "dgate_cancel"
CANCEL_REQUEST_ID = "request_id"
CANCEL_OUTPUT = "cancelled"

# Ensemble config parameter that marks a model as a D-Gate pipeline (what /v1/models lists).
PIPELINE_MARKER_PARAMETER = "dgate_pipeline"


def request_tensors(task: str, takes_image: bool = False) -> tuple[TensorSpec, ...]:
    """The ensemble inputs of a pipeline: images, or videos (with the conditioning image for i2v)."""
    if task == "image":
        return (*ENSEMBLE_INPUTS, *IMAGE_REQUEST_EXTRAS)
    return (*ENSEMBLE_INPUTS, *VIDEO_INPUTS, *((CONDITIONING_IMAGE,) if takes_image else ()))


def ensemble_arrays(values: Mapping[str, Any], tensors: tuple[TensorSpec, ...] = ENSEMBLE_INPUTS
                    ) -> dict[str, np.ndarray]:
    """One [1]-shaped array per ensemble input (an array input as given), from a mapping of input
    name -> Python value.

    The one place that turns a request into Triton tensors: the frontend, the benchmark and the
    tests all call it (through `infer_inputs` for tritonclient objects).
    """
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.optional and values.get(tensor.name) is None:
            continue
        value = values[tensor.name]
        if isinstance(value, np.ndarray):
            arrays[tensor.name] = value.astype(tensor.numpy_dtype, copy=False)
            continue
        arrays[tensor.name] = np.array([value.encode() if isinstance(value, str) else value], dtype=tensor.numpy_dtype)
    return arrays


def infer_inputs(client_module: Any, values: Mapping[str, Any], dtypes: Mapping[str, str] | None = None,
                 tensors: tuple[TensorSpec, ...] = ENSEMBLE_INPUTS) -> list[Any]:
    """tritonclient `InferInput`s (http, grpc or their aio twins: pass the module) for a request.

    `dtypes` overrides an input's datatype, to send a wrong one on purpose (tests).
    """
    inputs = []
    for name, array in ensemble_arrays(values, tensors).items():
        tensor = next(t for t in tensors if t.name == name)
        datatype = (dtypes or {}).get(name, tensor.client_dtype)
        if datatype != tensor.client_dtype:
            from tritonclient.utils import triton_to_np_dtype

            array = array.astype(triton_to_np_dtype(datatype))
        infer_input = client_module.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs
