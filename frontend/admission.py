"""Admission control: a request over its pipeline's bound of work in flight is refused at once.

Without a bound, requests past what Triton can run wait in its queues until their deadline
(DGATE_REQUEST_TIMEOUT_S, minutes) and then fail; refused in milliseconds, a client (or the load
balancer) retries later or elsewhere.

- The count is per pipeline and per frontend replica (an in-process counter: replicas do not share
  it, so N replicas admit up to N x the bound into one Triton).
- The bound, by default, is `ADMISSION_FACTOR x max_images` of the pipeline as served (its ensemble
  parameters, the one config the engine reads): the denoiser runs at most `max_images` images of a
  request in one batch, and a few full requests queued behind the running one keep it busy without
  any waiting for more than a few generations. `DGATE_MAX_IN_FLIGHT_PER_PIPELINE` overrides it:
  `8` for every pipeline, or `sd=8,flux=2` (an entry without a name sets the others).
- The refusal is a 429 `pipeline_busy` with `Retry-After`, not a 503: the server is healthy and the
  request valid, only too many are in flight right now; a 503 also reads as "this backend is down"
  to load balancers and health checks, and the official clients retry both, honouring Retry-After.
- A slot is taken before the engine is called and released however the request ends: its result,
  an error, a client that disconnects, a stream that closes (`Slot` releases once, whoever calls).
"""

from __future__ import annotations

from collections import defaultdict
from types import TracebackType

from dgate.core.served_pipeline import ServedPipeline
from dgate.frontend.errors import OpenAIError
from dgate.frontend.metrics import Metrics

ADMISSION_FACTOR = 4


def parse_bounds(text: str | None) -> tuple[int | None, dict[str, int]]:
    """`DGATE_MAX_IN_FLIGHT_PER_PIPELINE` -> (bound of every pipeline not named, {pipeline: bound});
    ValueError on a malformed entry or a bound below 1."""
    default: int | None = None
    named: dict[str, int] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, _, value = entry.rpartition("=")
        try:
            bound = int(value)
        except ValueError:
            raise ValueError(f"DGATE_MAX_IN_FLIGHT_PER_PIPELINE: {entry!r} is not <n> or <pipeline>=<n>") from None
        if bound < 1:
            raise ValueError(f"DGATE_MAX_IN_FLIGHT_PER_PIPELINE: {entry!r}: a bound is at least 1")
        if name.strip():
            named[name.strip()] = bound
        else:
            default = bound
    return default, named


def default_bound(pipeline: ServedPipeline) -> int:
    return ADMISSION_FACTOR * max(1, pipeline.limits.max_images)


class Slot:
    """One admitted request's place; `release()` is idempotent, so every way out may call it."""

    def __init__(self, admission: Admission, model: str) -> None:
        self._admission, self._model, self._held = admission, model, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release(self._model)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


class Admission:
    def __init__(self, bounds: str | None = None, *, retry_after_s: int = 5, metrics: Metrics | None = None) -> None:
        self._default, self._named = parse_bounds(bounds)
        self._retry_after_s, self._metrics = retry_after_s, metrics
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def bound(self, model: str, pipeline: ServedPipeline) -> int:
        if model in self._named:
            return self._named[model]
        return self._default if self._default is not None else default_bound(pipeline)

    def in_flight(self, model: str) -> int:
        return self._in_flight[model]

    def admit(self, model: str, pipeline: ServedPipeline) -> Slot:
        """A slot, or a 429 `pipeline_busy` when the pipeline's bound is reached (nothing waits)."""
        bound = self.bound(model, pipeline)
        if self._in_flight[model] >= bound:
            if self._metrics is not None:
                self._metrics.admission_refusals.labels(model=model, kind="image").inc()
            raise OpenAIError(
                429, f"{model} has {bound} requests in flight on this server, its bound: retry after "
                f"{self._retry_after_s} s", type="server_error", param="model", code="pipeline_busy",
                headers={"Retry-After": str(self._retry_after_s)})
        self._in_flight[model] += 1
        self._gauge(model)
        return Slot(self, model)

    def _release(self, model: str) -> None:
        self._in_flight[model] -= 1
        self._gauge(model)

    def _gauge(self, model: str) -> None:
        if self._metrics is not None:
            self._metrics.pipeline_in_flight.labels(model=model).set(self._in_flight[model])
