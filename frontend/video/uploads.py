"""Reading a video create request off the wire, and the `input_reference` image, without trusting it.

The openai client always sends multipart (even without a file); curl and the seed's examples send
JSON; both are read here into one dict of fields. The body is bounded before it is read: a declared
`Content-Length` past the limit is refused at once, and the stream is counted as it arrives, so an
oversized upload is never buffered. The image's pixel count is read from its header and checked
before anything is decoded, so a decompression bomb (a small file claiming a huge image) is refused
without allocating its pixels.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from dgate.core.errors import InvalidRequestError
from dgate.frontend.errors import OpenAIError

REFERENCE_FIELD = "input_reference"
# Room for the text fields beside the file (the prompt is at most a few KB).
FIELDS_BYTES = 1 << 20
MAX_FIELDS = 64
# The formats a reference may arrive in; Pillow's rarer decoders stay out of reach.
REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class CreateBody:
    fields: dict[str, Any]
    reference: bytes | None  # the uploaded `input_reference` file, as sent


def _too_large(max_upload_bytes: int) -> OpenAIError:
    return OpenAIError(400, f"input_reference is larger than the {max_upload_bytes / 2**20:g} MB allowed "
                       "(DGATE_MAX_UPLOAD_MB)", param=REFERENCE_FIELD, code="file_too_large")


async def _bounded(stream: AsyncIterator[bytes], limit: int, max_upload_bytes: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise _too_large(max_upload_bytes)
        yield chunk


async def read_create_body(request: Request, *, max_upload_bytes: int) -> CreateBody:
    """The fields of a multipart or JSON body; OpenAIError (400) for anything else or too much."""
    limit = max_upload_bytes + FIELDS_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(max_upload_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    stream = _bounded(request.stream(), limit, max_upload_bytes)
    if content_type == "multipart/form-data":
        return await _read_multipart(request, stream, max_upload_bytes)
    if content_type in ("application/json", ""):
        return CreateBody(_read_json(b"".join([chunk async for chunk in stream])), None)
    raise OpenAIError(400, f"send multipart/form-data or application/json, not {content_type!r}",
                      code="unsupported_content_type")


def _read_json(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(fields, dict):
        raise OpenAIError(400, "The request body must be a JSON object", code="invalid_json")
    if REFERENCE_FIELD in fields:
        raise OpenAIError(400, "input_reference must be an image file uploaded as multipart/form-data (POST "
                          "/v1/videos); references by URL or file id are not supported",
                          param=REFERENCE_FIELD, code="invalid_value")
    return fields


async def _read_multipart(request: Request, stream: AsyncGenerator[bytes, None],
                          max_upload_bytes: int) -> CreateBody:
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=MAX_FIELDS,
                             max_part_size=FIELDS_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise OpenAIError(400, f"invalid multipart body: {exc.message}", code="invalid_multipart") from exc
    try:
        fields: dict[str, Any] = {}
        reference = None
        for key, value in form.multi_items():
            if key in fields or (key == REFERENCE_FIELD and reference is not None):
                raise OpenAIError(400, f"'{key}' is given more than once", param=key, code="invalid_value")
            if isinstance(value, UploadFile):
                if key != REFERENCE_FIELD:
                    raise OpenAIError(400, f"Unrecognized file field: {key} (only input_reference takes a file)",
                                      param=key, code="unknown_parameter")
                if value.size is not None and value.size > max_upload_bytes:
                    raise _too_large(max_upload_bytes)
                reference = await value.read()
            elif key == REFERENCE_FIELD or key.startswith(f"{REFERENCE_FIELD}["):
                raise OpenAIError(400, "input_reference must be an uploaded image file; references by URL or "
                                  "file id are not supported", param=REFERENCE_FIELD, code="invalid_value")
            elif value != "" or key == "prompt":  # an empty form field is an unset one (curl -F seed=)
                fields[key] = value
    finally:
        await form.close()
    if reference is not None and len(reference) > max_upload_bytes:
        raise _too_large(max_upload_bytes)
    return CreateBody(fields, reference)


def decode_reference(data: bytes, *, max_pixels: int) -> np.ndarray:
    """An uploaded image -> uint8 RGB [H, W, 3]; InvalidRequestError (param input_reference) if it is not
    an image, or is larger than `max_pixels` (checked from the header, before decoding). CPU-bound."""
    try:
        with Image.open(io.BytesIO(data), formats=REFERENCE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequestError(
                    f"input_reference is {width}x{height} = {width * height} pixels; at most {max_pixels} "
                    "are accepted (DGATE_MAX_INPUT_PIXELS)", REFERENCE_FIELD)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except InvalidRequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequestError(f"input_reference is refused as a decompression bomb: {exc}",
                                  REFERENCE_FIELD) from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequestError("input_reference is not a PNG, JPEG, WebP, GIF or BMP image",
                                  REFERENCE_FIELD) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidRequestError(f"input_reference could not be decoded: {exc}", REFERENCE_FIELD) from exc
