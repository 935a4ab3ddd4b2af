"""`GET /v1/models` and `GET /v1/models/{model_id}`: the loaded D-Gate pipelines as OpenAI models."""

from __future__ import annotations

from fastapi import APIRouter

from dgate.frontend.schemas import ModelList, ModelObject
from dgate.frontend.state import State

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    names = await state.engine.list_pipelines()
    return ModelList(data=[ModelObject(id=name, created=state.started) for name in names])


@router.get("/v1/models/{model_id}", response_model=ModelObject)
async def retrieve_model(model_id: str, state: State) -> ModelObject:
    await state.engine.pipeline_limits(model_id)  # ModelNotFound -> 404 for components and unknown names
    return ModelObject(id=model_id, created=state.started)
