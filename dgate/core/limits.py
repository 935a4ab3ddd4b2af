"""What a served pipeline accepts: defaults and limits, written once.

Export stores these as string parameters of the pipeline's ensemble `config.pbtxt`; the denoiser
validates against them inside Triton and the frontend reads them from Triton's model config, so
the two can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from dgate.core.errors import InvalidRequestError

SCHEDULER_NAMES = ("euler", "euler_a", "ddim", "dpm++", "pndm", "default")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationLimits:
    default_width: int
    default_height: int
    min_size: int
    max_width: int
    max_height: int
    size_multiple: int
    default_steps: int
    max_steps: int
    max_images: int
    default_guidance_scale: float
    max_guidance_scale: float
    default_scheduler: str

    def to_parameters(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> GenerationLimits:
        values = {}
        for field in fields(cls):
            if field.name not in parameters:
                raise KeyError(f"pipeline parameter {field.name!r} is missing")
            raw = parameters[field.name]
            values[field.name] = raw if field.type == "str" else (float if field.type == "float" else int)(raw)
        return cls(**values)

    def validate(
        self,
        *,
        prompt: str | None = None,
        num_images: int,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        width: int,
        height: int,
        scheduler: str,
    ) -> None:
        """Raise InvalidRequestError naming the first field that is out of bounds.

        `prompt` is optional because the denoiser only sees the encoded prompt (the tokenizer model
        checks the text).
        """
        if prompt is not None and not prompt.strip():
            raise InvalidRequestError("prompt must be a non-empty string", "prompt")
        if not 1 <= num_images <= self.max_images:
            raise InvalidRequestError(f"n must be between 1 and {self.max_images}, got {num_images}", "n")
        if not 1 <= num_inference_steps <= self.max_steps:
            raise InvalidRequestError(
                f"num_inference_steps must be between 1 and {self.max_steps}, got {num_inference_steps}",
                "num_inference_steps",
            )
        if not 0.0 <= guidance_scale <= self.max_guidance_scale:
            raise InvalidRequestError(
                f"guidance_scale must be between 0 and {self.max_guidance_scale}, got {guidance_scale}",
                "guidance_scale",
            )
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequestError(f"seed must be between 0 and {MAX_SEED}, got {seed}", "seed")
        for name, value, maximum in (("width", width, self.max_width), ("height", height, self.max_height)):
            if value % self.size_multiple or not self.min_size <= value <= maximum:
                raise InvalidRequestError(
                    f"{name} must be a multiple of {self.size_multiple} between {self.min_size} and "
                    f"{maximum}, got {value}",
                    "size",
                )
        if scheduler not in SCHEDULER_NAMES:
            raise InvalidRequestError(
                f"scheduler must be one of {', '.join(SCHEDULER_NAMES)}, got {scheduler!r}", "scheduler"
            )
