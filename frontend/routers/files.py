"""`GET /v1/files/{file_id}`: the images handed out as `url`, until they expire.

`/v1/files/{file_id}/content` answers the same, which is the path the openai client's
`files.content(file_id)` asks for. The images are files in the shared assets directory, so any
replica answers for a link another one issued.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from dgate.frontend.errors import OpenAIError
from dgate.frontend.state import State

router = APIRouter(tags=["files"])


@router.get("/v1/files/{file_id}", response_class=Response)
@router.get("/v1/files/{file_id}/content", response_class=Response, include_in_schema=False)
async def get_file(file_id: str, state: State) -> Response:
    item = await asyncio.to_thread(state.store.get, file_id)  # file I/O off the event loop
    if item is None:
        raise OpenAIError(
            404, f"No such file: '{file_id}' (it may have expired)", param="file_id", code="file_not_found"
        )
    # Private: the id is the only access control, shared caches must not keep the image.
    headers = {"Cache-Control": f"private, max-age={int(state.store.remaining_s(item))}"}
    return Response(item.data, media_type=item.content_type, headers=headers)
