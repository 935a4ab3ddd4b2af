"""`GET /v1/models` and `GET /v1/models/{model_id}`: the loaded D-Gate pipelines as OpenAI models."""

from __future__ import annotations

from fastapi import APIRouter

from dgate.frontend.schemas import ModelList, ModelObject
from dgate.frontend.state import State

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(state: State) -> ModelList:
    names = await state.engine.list_pipelines()
    limits = [await state.engine.pipeline_limits(name) for name in names]  # cached by the engine
    return ModelList(data=[ModelObject.from_limits(name, state.started, lim) for name, lim in zip(names, limits,
                                                                                                  strict=True)])


@router.get("/v1/models/{model_id}", response_model=ModelObject, response_model_exclude_none=True)
async def retrieve_model(model_id: str, state: State) -> ModelObject:
    limits = await state.engine.pipeline_limits(model_id)  # ModelNotFound -> 404 for components, unknown names
    return ModelObject.from_limits(model_id, state.started, limits)
