"""`dgate bench`'s report from constructed numbers: the per-step overhead check can fail, and says when
it cannot be computed, for both denoiser designs (no server: Triton's statistics are built here)."""

from __future__ import annotations

from typing import Any

import pytest

from dgate.bench import report
from dgate.bench.step_overhead import step_overhead, unavailable
from dgate.bench.triton_stats import Snapshot, StatsProbe, UnetBatching
from dgate.bench.workload import LevelResult

PIPELINE, STEPS, REQUESTS = "tiny-sd", 4, 3
# Per request at concurrency 1: what each model computes (ms) and how often it runs.
MODELS = {"tokenize": (1.0, 1), "text_encoder": (5.0, 1), "unet": (20.0, STEPS), "vae_decoder": (10.0, 1)}
MODEL_MS = sum(ms * calls for ms, calls in MODELS.values())  # 96 ms
# The denoiser's own compute as Triton reports it: the blocking design's execute holds the whole
# request; the async (decoupled) design's returns at once.
DENOISER_MS = {"blocking": 99.0, "async": 0.4}


def _stat(name: str, requests: int, compute_ms: float, rows: int | None = None) -> dict[str, Any]:
    """One `model_stats` entry as tritonclient's gRPC JSON writes it (int64 counts as strings)."""
    ns = str(round(compute_ms * 1e6))
    return {"name": name, "version": "1", "inference_count": str(rows or requests), "execution_count": str(requests),
            "inference_stats": {"success": {"count": str(requests), "ns": ns},
                                "compute_infer": {"count": str(requests), "ns": ns},
                                "queue": {"count": str(requests), "ns": str(requests * 100_000)}},
            "batch_stats": [{"batch_size": "2", "compute_infer": {"count": str(requests), "ns": ns}}]}


def _stats(requests: int, design: str, denoiser_requests: int | None = None) -> dict[str, Any]:
    """Cumulative statistics of every model Triton has, after `requests` requests of PIPELINE."""
    counted = requests if denoiser_requests is None else denoiser_requests
    entries = [_stat(f"{PIPELINE}_{name}", requests * calls, requests * calls * ms,
                     rows=2 * requests * calls if name == "unet" else None) for name, (ms, calls) in MODELS.items()]
    entries += [
        _stat(f"{PIPELINE}_denoiser", counted, counted * DENOISER_MS[design]),
        _stat(PIPELINE, requests, requests * 2 * MODEL_MS),  # the ensemble: its steps' time again
        _stat(f"{PIPELINE}-async_unet", 50, 5000.0),  # another pipeline sharing the prefix
    ]
    return {"model_stats": entries}


def _deltas(design: str, denoiser_requests: int | None = None) -> Snapshot:
    before = Snapshot.from_json(_stats(7, design), PIPELINE)  # warm-up requests before the level
    after = Snapshot.from_json(_stats(7 + REQUESTS, design,
                                      None if denoiser_requests is None else 7 + denoiser_requests), PIPELINE)
    return after - before


def _results(latency_ms: float) -> list[LevelResult]:
    latencies = (latency_ms / 1000,) * REQUESTS
    return [LevelResult(report.DIFFUSERS, 1, (0.3,) * REQUESTS, 0.9),
            LevelResult(report.TRITON, 1, latencies, sum(latencies)),
            LevelResult(report.FRONTEND, 1, latencies, sum(latencies))]


def _step_target(found: list[report.Target]) -> report.Target:
    return next(t for t in found if t.name.startswith("per-step overhead"))


@pytest.mark.parametrize("design", ["blocking", "async"])
@pytest.mark.parametrize(("extra_ms_per_step", "verdict"), [(1.0, "MET"), (1.0 + 3.0, "MISSED")])
def test_step_overhead_is_latency_minus_model_compute(design: str, extra_ms_per_step: float, verdict: str) -> None:
    latency_ms = MODEL_MS + STEPS * extra_ms_per_step  # a slow path: +3 ms per step over a fast one
    results = _results(latency_ms)
    overhead = step_overhead(results[1].latencies, STEPS, _deltas(design), PIPELINE, "unet")
    assert overhead.available
    assert overhead.compute_ms == pytest.approx({f"{PIPELINE}_{name}": ms * calls
                                                 for name, (ms, calls) in MODELS.items()})
    assert overhead.ms_per_step == pytest.approx(extra_ms_per_step)  # the denoiser's own figure plays no part
    target = _step_target(report.targets(results, overhead))
    assert target.verdict == verdict and target.value == f"{extra_ms_per_step:.2f} ms"
    lines = report.target_lines(report.targets(results, overhead))
    assert f"  [{verdict}] per-step overhead at c=1 <= 2 ms: {extra_ms_per_step:.2f} ms" in lines
    lines = report.step_lines(overhead, [UnetBatching.from_deltas(1, _deltas(design)[f"{PIPELINE}_unet"])])
    assert lines[0].startswith("BLS step cost (per-step overhead = ")
    assert lines[1].startswith("  c=1: client ") and lines[1].endswith(f"-> {extra_ms_per_step:.2f} ms/step")
    assert f"{PIPELINE}_unet 80.0" in lines[1] and "denoiser" not in lines[1]
    assert lines[2] == ("  c=1: UNet 20.00 ms/execution (queue 0.10 ms/call); "
                        "UNet batching 2.00 rows (1.00 requests) per execution")


def test_statistics_missing_a_request_are_unavailable_never_met() -> None:
    results = _results(MODEL_MS + STEPS * 1.0)  # would be MET
    overhead = step_overhead(results[1].latencies, STEPS, _deltas("async", denoiser_requests=REQUESTS - 1),
                             PIPELINE, "unet")
    assert not overhead.available and "the client sent 3" in overhead.reason
    target = _step_target(report.targets(results, overhead))
    assert target.met is None and target.verdict == "UNAVAILABLE"
    lines = report.target_lines(report.targets(results, overhead))
    assert any(line.startswith("  [UNAVAILABLE] per-step overhead") for line in lines)
    assert not any(line.startswith(("  [MET] per-step", "  [MISSED] per-step")) for line in lines)
    assert report.step_lines(overhead, [])[1].startswith("  c=1: unavailable: Triton counted 2 ")


@pytest.mark.parametrize(("latencies", "deltas", "reason"), [
    ((), Snapshot(), "no request was measured at concurrency 1"),
    ((0.1,) * REQUESTS, Snapshot({f"{PIPELINE}_denoiser": _deltas("async")[f"{PIPELINE}_denoiser"]}),
     f"no {PIPELINE}_unet work"),
])
def test_nothing_to_compute_from_is_unavailable(latencies: tuple[float, ...], deltas: Snapshot, reason: str) -> None:
    overhead = step_overhead(latencies, STEPS, deltas, PIPELINE, "unet")
    assert not overhead.available and reason in overhead.reason
    assert _step_target(report.targets(_results(100.0), overhead)).verdict == "UNAVAILABLE"


def test_concurrency_one_not_measured_is_unavailable() -> None:
    results = [LevelResult(report.DIFFUSERS, 1, (0.3,), 0.3), LevelResult(report.TRITON, 4, (0.1,) * 4, 0.2)]
    found = report.targets(results, unavailable(STEPS, "concurrency 1 was not measured (--concurrency)"))
    assert [t.verdict for t in found] == ["MET", "UNAVAILABLE"]


def test_snapshot_keeps_the_pipeline_and_subtracts_by_name() -> None:
    snapshot = Snapshot.from_json(_stats(2, "async"), PIPELINE)
    assert set(snapshot.models) == {PIPELINE, f"{PIPELINE}_denoiser", *(f"{PIPELINE}_{m}" for m in MODELS)}
    unet = snapshot[f"{PIPELINE}_unet"]
    assert (unet.requests, unet.inference_count, unet.compute_ns) == (2 * STEPS, 4 * STEPS, 2 * STEPS * 20_000_000)
    assert snapshot["not-there"].requests == 0
    assert (snapshot - Snapshot())[f"{PIPELINE}_unet"] == unet and (snapshot + snapshot)["tiny-sd"].requests == 4


async def test_settled_waits_for_the_denoiser_to_count_the_requests() -> None:
    class Client:
        """Triton reports the last request's statistics a moment after the client has its answer."""

        def __init__(self) -> None:
            self.calls = 0

        async def get_inference_statistics(self, model_name: str = "", as_json: bool = False) -> dict[str, Any]:
            assert model_name == "" and as_json
            self.calls += 1
            return _stats(7 + REQUESTS, "async", denoiser_requests=7 + (REQUESTS if self.calls >= 3 else 2))

    probe = StatsProbe(Client(), PIPELINE, "unet")
    before = Snapshot.from_json(_stats(7, "async"), PIPELINE)
    after = await probe.settled(before, REQUESTS)
    assert (after - before)[f"{PIPELINE}_denoiser"].requests == REQUESTS and probe.client.calls == 3
