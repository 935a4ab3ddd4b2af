"""Tensor descriptions shared by export, config rendering, the Triton models and the frontend."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: Triton dtype and dims *without* the batch dimension (-1 = dynamic)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> type:
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def client_dtype(self) -> str:
        """The datatype string tritonclient uses ("FP32", "BYTES", ...)."""
        return "BYTES" if self.dtype == "TYPE_STRING" else self.dtype.removeprefix("TYPE_")


# The request contract of every pipeline ensemble: one Triton request carries all `num_images`.
ENSEMBLE_INPUTS = (
    TensorSpec("prompt", "TYPE_STRING", (1,)),
    TensorSpec("negative_prompt", "TYPE_STRING", (1,)),
    TensorSpec("num_images", "TYPE_INT32", (1,)),
    TensorSpec("num_inference_steps", "TYPE_INT32", (1,)),
    TensorSpec("guidance_scale", "TYPE_FP32", (1,)),
    TensorSpec("seed", "TYPE_INT64", (1,)),
    TensorSpec("height", "TYPE_INT32", (1,)),
    TensorSpec("width", "TYPE_INT32", (1,)),
    TensorSpec("scheduler", "TYPE_STRING", (1,)),
)
ENSEMBLE_OUTPUT = TensorSpec("images", "TYPE_UINT8", (-1, -1, -1, 3))  # N x H x W x RGB

# Ensemble config parameter that marks a model as a D-Gate pipeline (what /v1/models lists),
# and the one naming its family ("unet" or "dit").
PIPELINE_MARKER_PARAMETER = "dgate_pipeline"
PIPELINE_FAMILY_PARAMETER = "dgate_family"
