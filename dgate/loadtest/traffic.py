"""Bounded load on the frontend: a fixed number of image requests at a fixed concurrency, every one
accounted for.

Each request is sent with httpx (unary JSON, or SSE when streamed) and ends in exactly one outcome:
`ok` (200 with the images, or the stream's `completed` event), an HTTP error answered in OpenAI's
shape (`429 pipeline_busy`, `503 service_unavailable`...) or, after a stream's 200, as its `error` event
(`stream_error`), `refused` (no connection: the server is
gone), `hung` (no answer within the client's deadline) or `broken` (a 200 without its images, a stream
that ended early, an error body not in OpenAI's shape). `lost` counts requests sent without an
outcome; it is 0 unless the load generator itself is broken. Latencies are of the `ok` answers.

Why not locust: a load run here must end after exactly N requests and classify each one (status,
error code, stream completeness) to prove that nothing was lost; locust runs for a duration,
aggregates by name, and monkey-patches the process with gevent, which the grpc/asyncio code beside it
in the tests does not survive. An asyncio client over httpx does exactly this in ~150 lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class LoadPlan:
    models: Sequence[str]
    requests: int = 400
    concurrency: int = 32
    sizes: Sequence[str] = ("64x64", "32x32", "64x32")
    n_choices: Sequence[int] = (1, 1, 2)
    stream_share: float = 0.25  # of the requests, streamed as SSE (with one partial image)
    steps: int = 2
    deadline_s: float = 60.0  # a request without an answer by then is `hung`
    seed: int = 0
    api_key: str | None = None


@dataclass
class Outcome:
    kind: str  # "ok", "http", "stream_error", "refused", "hung", "broken"
    status: int = 0
    code: str | None = None
    seconds: float = 0.0
    started: float = 0.0  # since the run began
    streamed: bool = False

    @property
    def label(self) -> str:
        if self.kind == "http":
            return f"{self.status} {self.code}"
        return f"stream-error {self.code}" if self.kind == "stream_error" else self.kind


@dataclass
class LoadReport:
    sent: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - len(self.outcomes)

    def counts(self) -> Counter[str]:
        return Counter(outcome.label for outcome in self.outcomes)

    def latencies(self) -> list[float]:
        return sorted(o.seconds for o in self.outcomes if o.kind == "ok")

    def percentile(self, q: float) -> float:
        values = self.latencies()
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]

    def longest_s(self) -> float:
        return max((o.seconds for o in self.outcomes), default=0.0)

    def summary(self) -> str:
        counts = ", ".join(f"{label}: {count}" for label, count in sorted(self.counts().items()))
        ok = len(self.latencies())
        return (f"{self.sent} sent, {len(self.outcomes)} answered, {self.lost} lost in {self.wall_s:.1f} s "
                f"({ok / self.wall_s if self.wall_s else 0:.1f} ok/s) | {counts} | ok latency p50 "
                f"{self.percentile(50):.3f} s, p95 {self.percentile(95):.3f} s, p99 {self.percentile(99):.3f} s, "
                f"longest answer {self.longest_s():.2f} s")


def request_bodies(plan: LoadPlan) -> list[tuple[dict, bool]]:
    """(JSON body, streamed) for every request of the plan, reproducible from its seed."""
    rng = random.Random(plan.seed)
    bodies = []
    for index in range(plan.requests):
        streamed = rng.random() < plan.stream_share
        body: dict = {"model": plan.models[index % len(plan.models)], "prompt": f"load test {index}",
                      "size": rng.choice(plan.sizes), "n": 1 if streamed else rng.choice(plan.n_choices),
                      "num_inference_steps": plan.steps, "seed": index}
        if streamed:
            body |= {"stream": True, "partial_images": 1}
        bodies.append((body, streamed))
    return bodies


def _error_code(response: httpx.Response) -> str | None:
    """The OpenAI error's `code`, or None when the body is not an OpenAI error."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        return None
    return str(error["code"])


async def _unary(client: httpx.AsyncClient, body: dict) -> Outcome:
    response = await client.post("/v1/images/generations", json=body)
    if response.status_code != 200:
        code = _error_code(response)
        return Outcome("http", response.status_code, code) if code else Outcome("broken", response.status_code)
    data = response.json().get("data") or []
    return Outcome("ok", 200) if len(data) == body["n"] else Outcome("broken", 200, "missing images")


async def _streamed(client: httpx.AsyncClient, body: dict) -> Outcome:
    async with client.stream("POST", "/v1/images/generations", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            code = _error_code(response)
            return Outcome("http", response.status_code, code) if code else Outcome("broken", response.status_code)
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("type") == "image_generation.completed":
                return Outcome("ok", 200, streamed=True)
            if "error" in event:  # an error after the 200: the stream's own error event
                return Outcome("stream_error", 200, str(event["error"].get("code")), streamed=True)
    return Outcome("broken", 200, "stream ended without its image", streamed=True)


async def _one(client: httpx.AsyncClient, body: dict, streamed: bool, deadline_s: float, t0: float) -> Outcome:
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline_s):
            outcome = await (_streamed(client, body) if streamed else _unary(client, body))
    except TimeoutError:
        outcome = Outcome("hung")
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        outcome = Outcome("refused")  # the server went away (or was never there)
    outcome.seconds, outcome.started, outcome.streamed = time.monotonic() - started, started - t0, streamed
    return outcome


async def run_load(base_url: str, plan: LoadPlan,
                   on_outcome: Callable[[Outcome], None] | None = None) -> LoadReport:
    """Send the plan's requests, `concurrency` at a time; returns when every one has an outcome."""
    report = LoadReport()
    bodies = request_bodies(plan)
    queue: asyncio.Queue[tuple[dict, bool]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    t0 = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                body, streamed = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            report.sent += 1
            outcome = await _one(client, body, streamed, plan.deadline_s, t0)
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

    # The client's own timeout is past the deadline: `hung` is decided by the deadline above.
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=plan.deadline_s + 5) as client:
        await asyncio.gather(*(worker(client) for _ in range(plan.concurrency)))
    report.wall_s = time.monotonic() - t0
    return report
