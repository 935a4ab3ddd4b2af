"""A pipeline as Triton serves it: its limits, its capabilities and whether its denoiser streams.

Export writes these as string parameters of the pipeline's ensemble `config.pbtxt` (one flat set of
keys, the same since before capabilities and limits were apart); the frontend reads them back from
Triton's model config and reports them on `/v1/models`.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, TypeVar

from dgate.core.capabilities import Capabilities
from dgate.core.limits import GenerationLimits

T = TypeVar("T", GenerationLimits, Capabilities)

STREAMS_PARAMETER = "streams"


def _to_strings(value: GenerationLimits | Capabilities) -> dict[str, str]:
    return {key: ",".join(item) if isinstance(item, tuple) else str(item) for key, item in asdict(value).items()}


def _from_strings(cls: type[T], parameters: dict[str, str]) -> T:
    values: dict[str, Any] = {}
    for field in fields(cls):
        if field.name not in parameters and field.default is not MISSING:
            continue
        if field.name not in parameters:
            raise KeyError(f"pipeline parameter {field.name!r} is missing")
        raw = parameters[field.name]
        if field.type == "int":
            values[field.name] = int(raw)
        elif field.type == "float":
            values[field.name] = float(raw)
        elif field.type == "bool":
            values[field.name] = raw == "True"
        elif str(field.type).startswith("tuple"):
            values[field.name] = tuple(name for name in raw.split(",") if name)
        else:
            values[field.name] = raw
    return cls(**values)


@dataclass(frozen=True)
class ServedPipeline:
    limits: GenerationLimits
    capabilities: Capabilities = Capabilities()
    # The async (decoupled) denoiser: progress and partial images stream over Triton's gRPC stream.
    # A serving choice (`dgate export --denoiser`), not a property of the pipeline.
    streams: bool = False

    def to_parameters(self) -> dict[str, str]:
        return (_to_strings(self.limits) | _to_strings(self.capabilities)
                | {STREAMS_PARAMETER: str(self.streams)})

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> ServedPipeline:
        return cls(_from_strings(GenerationLimits, parameters), _from_strings(Capabilities, parameters),
                   parameters.get(STREAMS_PARAMETER) == "True")
