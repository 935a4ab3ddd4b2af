"""The frontend's inference backend: what it needs (`protocol`), the errors (`errors`) and the Triton
implementation (`triton`, with its error mapping in `triton_errors`)."""

from dgate.frontend.engine.errors import EngineError, EngineTimeout, ModelNotFound, ServiceUnavailable
from dgate.frontend.engine.protocol import (
    AdapterChecks,
    EditImages,
    Engine,
    ImageEngine,
    PartialCallback,
    PipelineCatalog,
    ProgressCallback,
    StepCallback,
    VideoEngine,
    resolve_model,
)
from dgate.frontend.engine.triton import TritonEngine

__all__ = [
    "AdapterChecks",
    "EditImages",
    "Engine",
    "EngineError",
    "EngineTimeout",
    "ImageEngine",
    "ModelNotFound",
    "PartialCallback",
    "PipelineCatalog",
    "ProgressCallback",
    "ServiceUnavailable",
    "StepCallback",
    "TritonEngine",
    "VideoEngine",
    "resolve_model",
]
