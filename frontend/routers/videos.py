"""The OpenAI Videos API (`/v1/videos...`), seed 000's `POST /v1/video/generations` and vLLM-Omni's
`POST /v1/videos/sync` (create, wait, answer the MP4). Translating only: the jobs live in
`video/service.py`, the worker pool in `video/jobs.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from dgate.frontend.auth import Owner
from dgate.frontend.disconnect import unless_disconnected
from dgate.frontend.jobs import VideoJob
from dgate.frontend.jobs.store import ListOrder
from dgate.frontend.state import AppState, State
from dgate.frontend.uploads import parse_fields
from dgate.frontend.video.encoding import CONTENT_TYPES
from dgate.frontend.video.schemas import (
    Variant,
    VideoCreateRequest,
    VideoDeleted,
    VideoList,
    VideoObject,
    VideoRemixRequest,
)
from dgate.frontend.video.uploads import REFERENCE_FIELD, read_create_body

router = APIRouter(tags=["videos"])

POLL_HEADER = "openai-poll-after-ms"
_FILE_EXTENSIONS = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpg"}
_CREATE_SCHEMA = VideoCreateRequest.model_json_schema()
# The body is read by hand (multipart or JSON), so /docs is told what it takes.
_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {**_CREATE_SCHEMA, "properties": {
        **_CREATE_SCHEMA["properties"], REFERENCE_FIELD: {"type": "string", "format": "binary"}}}},
    "application/x-www-form-urlencoded": {"schema": _CREATE_SCHEMA},
    "application/json": {"schema": _CREATE_SCHEMA},
}}}
_SYNC_ANSWER = {"responses": {"200": {"description": "the H.264 MP4", "content": {
    "video/mp4": {"schema": {"type": "string", "format": "binary"}}}}}}


def _answer(job: VideoJob, response: Response, state: AppState) -> VideoObject:
    if job.status in ("queued", "in_progress"):
        response.headers[POLL_HEADER] = str(state.settings.poll_after_ms)
    return VideoObject.from_job(job)


@router.post("/v1/videos", response_model=VideoObject, openapi_extra=_CREATE_BODY)
@router.post("/v1/video/generations", response_model=VideoObject, openapi_extra=_CREATE_BODY)
async def create_video(request: Request, response: Response, state: State, owner: Owner) -> VideoObject:
    body = await read_create_body(request, max_upload_bytes=int(state.settings.max_upload_mb * 2**20))
    job = await state.videos.create(parse_fields(VideoCreateRequest, body.fields), body.reference, owner)
    return _answer(job, response, state)


@router.post("/v1/videos/sync", response_class=FileResponse, openapi_extra={**_CREATE_BODY, **_SYNC_ANSWER})
async def create_video_sync(request: Request, state: State, owner: Owner) -> FileResponse:
    """vLLM-Omni's: the job of `POST /v1/videos`, waited for within DGATE_REQUEST_TIMEOUT_S; answers the MP4,
    or the job's error. A client that goes away deletes the job (stopping it)."""
    body = await read_create_body(request, max_upload_bytes=int(state.settings.max_upload_mb * 2**20))
    job = await state.videos.create(parse_fields(VideoCreateRequest, body.fields), body.reference, owner)
    path = await unless_disconnected(request, state.videos.finished(job.id, timeout_s=state.settings.request_timeout_s))
    return FileResponse(path, media_type=CONTENT_TYPES["video"], headers={"Cache-Control": "private"},
                        filename=f"{job.id}.mp4", content_disposition_type="inline")


@router.get("/v1/videos", response_model=VideoList)
async def list_videos(state: State, owner: Owner, after: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20, order: ListOrder = "desc") -> VideoList:
    jobs, has_more = await state.videos.page(after=after, limit=limit, order=order, owner=owner)
    return VideoList(data=[VideoObject.from_job(job) for job in jobs], first_id=jobs[0].id if jobs else None,
                     last_id=jobs[-1].id if jobs else None, has_more=has_more)


@router.get("/v1/videos/{video_id}", response_model=VideoObject)
async def retrieve_video(video_id: str, response: Response, state: State, owner: Owner) -> VideoObject:
    return _answer(await state.videos.get(video_id, owner), response, state)


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted)
async def delete_video(video_id: str, state: State, owner: Owner) -> VideoDeleted:
    job = await state.videos.delete(video_id, owner)
    return VideoDeleted(id=job.id)


@router.get("/v1/videos/{video_id}/content", response_class=FileResponse)
async def download_video_content(video_id: str, state: State, owner: Owner,
                                 variant: Variant = "video") -> FileResponse:
    path = await state.videos.content(video_id, variant, owner)
    # Private: with keys, the creating key's only (else the id is the only access control); no shared cache.
    return FileResponse(path, media_type=CONTENT_TYPES[variant], headers={"Cache-Control": "private"},
                        filename=f"{video_id}.{_FILE_EXTENSIONS[variant]}", content_disposition_type="inline")


@router.post("/v1/videos/{video_id}/remix", response_model=VideoObject)
async def remix_video(video_id: str, body: VideoRemixRequest, response: Response, state: State,
                      owner: Owner) -> VideoObject:
    return _answer(await state.videos.remix(video_id, body.prompt, owner), response, state)
