"""Operational endpoints: liveness, readiness (Triton ready and a pipeline loaded), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from dgate.frontend.engine import ServiceUnavailable
from dgate.frontend.state import State

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up; says nothing about Triton (that is /ready)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> dict[str, str]:
    if not await state.engine.ready():
        raise ServiceUnavailable("Triton is not ready or has no pipeline loaded")
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    counts = await state.videos.job_states()  # one count query per scrape: the gauge of jobs by state
    if counts is not None:
        state.metrics.set_job_states(counts)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
