"""Reading a video create request off the wire, and the `input_reference` image, without trusting it.

The openai client always sends multipart (even without a file); curl and the seed's examples send
JSON; both are read here into one dict of fields, bounded and bomb-safe as `frontend/uploads.py`
reads every upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from dgate.frontend.uploads import decode_rgb, not_a_file, read_form

REFERENCE_FIELD = "input_reference"


@dataclass(frozen=True)
class CreateBody:
    fields: dict[str, Any]
    reference: bytes | None  # the uploaded `input_reference` file, as sent


async def read_create_body(request: Request, *, max_upload_bytes: int) -> CreateBody:
    """The fields of a multipart or JSON body; OpenAIError (400) for anything else or too much."""
    form = await read_form(request, max_upload_bytes=max_upload_bytes, files={REFERENCE_FIELD: 1},
                           param=REFERENCE_FIELD, accept_json=True)
    if REFERENCE_FIELD in form.fields:  # JSON: a URL or file id
        raise not_a_file(REFERENCE_FIELD)
    references = form.files.get(REFERENCE_FIELD)
    return CreateBody(form.fields, references[0] if references else None)


def decode_reference(data: bytes, *, max_pixels: int) -> np.ndarray:
    """An uploaded image -> uint8 RGB [H, W, 3]; InvalidRequestError (param input_reference) if it is not
    an image, or is larger than `max_pixels` (checked from the header, before decoding). CPU-bound."""
    return decode_rgb(data, max_pixels=max_pixels, param=REFERENCE_FIELD)
