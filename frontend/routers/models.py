"""`GET /v1/models` and `GET /v1/models/{model_id}`: the loaded D-Gate pipelines as OpenAI models."""

from __future__ import annotations

from fastapi import APIRouter

from dgate.frontend.schemas import ModelList, ModelObject
from dgate.frontend.state import State

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(state: State) -> ModelList:
    names = await state.engine.list_pipelines()
    pipelines = [await state.engine.served_pipeline(name) for name in names]  # cached by the engine
    return ModelList(data=[ModelObject.from_pipeline(name, state.started, pipeline)
                           for name, pipeline in zip(names, pipelines, strict=True)])


@router.get("/v1/models/{model_id}", response_model=ModelObject, response_model_exclude_none=True)
async def retrieve_model(model_id: str, state: State) -> ModelObject:
    pipeline = await state.engine.served_pipeline(model_id)  # ModelNotFound -> 404 for components, unknown names
    return ModelObject.from_pipeline(model_id, state.started, pipeline)
