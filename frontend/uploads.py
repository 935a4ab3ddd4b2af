"""Reading an upload request off the wire, and its images, without trusting them.

Used by the Videos API (`input_reference`) and by image edits and variations (`image`, `mask`).

- The body is bounded before it is read: a declared `Content-Length` past the limit is refused at
  once, and the stream is counted as it arrives, so an oversized upload is never buffered.
  `DGATE_MAX_UPLOAD_MB` bounds a request's files together (plus 1 MB for its text fields).
- Multipart as the official `openai` client writes it: a list is repeated `name[]` parts (`image[]`
  for several images, `lora[]` for several adapters), read here as one list under `name`; a plain
  field given twice is a 400. A urlencoded form (`requests.post(url, data={...})`, vLLM-Omni's and
  SGLang's users) is read by the same rules, without files, and so is a JSON object where the route
  takes one. A text field is its text: an empty one is an empty value, not an unset one, so `seed=`
  is a 400 naming `seed` (as the peers answer) rather than a random seed.
- An image's pixel count is read from its header and checked before anything is decoded, so a
  decompression bomb (a small file claiming a huge image) is refused without allocating its pixels.
"""

from __future__ import annotations

import io
import json
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from dgate.core.errors import InvalidRequestError
from dgate.frontend.errors import OpenAIError

# Room for the text fields beside the files (the prompt is at most a few KB).
FIELDS_BYTES = 1 << 20
MAX_FIELDS = 64
# The formats an uploaded image may arrive in; Pillow's rarer decoders stay out of reach.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Form:
    fields: dict[str, Any]  # text fields (a `name[]` list under `name`), or a JSON body's members
    files: dict[str, list[bytes]] = field(default_factory=dict)  # uploaded files by field, in order


def too_large(param: str, max_upload_bytes: int) -> OpenAIError:
    return OpenAIError(400, f"the upload ({param}) is larger than the {max_upload_bytes / 2**20:g} MB allowed "
                       "(DGATE_MAX_UPLOAD_MB)", param=param, code="file_too_large")


async def _bounded(stream: AsyncIterator[bytes], limit: int, too_much: OpenAIError) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise too_much
        yield chunk


FORM_URLENCODED = "application/x-www-form-urlencoded"


async def read_form(request: Request, *, max_upload_bytes: int, files: Mapping[str, int], param: str,
                    accept_json: bool = False) -> Form:
    """A multipart or urlencoded form (or, with `accept_json`, a JSON object); OpenAIError (400) for anything
    else or too much. `files`: the fields that take files and how many each (`param` is blamed for the size);
    one of them given as text (a URL, a file id) is a 400 naming it."""
    too_much = too_large(param, max_upload_bytes)
    limit = max_upload_bytes + FIELDS_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_much
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    stream = _bounded(request.stream(), limit, too_much)
    if content_type == "multipart/form-data":
        form = await _read_multipart(request, stream, files, param)
        if sum(len(data) for uploads in form.files.values() for data in uploads) > max_upload_bytes:
            raise too_much
        return form
    if content_type == FORM_URLENCODED:
        return Form(_read_urlencoded(b"".join([chunk async for chunk in stream]), files))
    if accept_json and content_type in ("application/json", ""):
        fields = _read_json(b"".join([chunk async for chunk in stream]))
        for name in files:
            if name in fields:
                raise not_a_file(name)
        return Form(fields)
    wanted = "multipart/form-data, a urlencoded form" + (" or application/json" if accept_json else "")
    raise OpenAIError(400, f"send {wanted}, not {content_type!r}", code="unsupported_content_type")


def _read_json(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(fields, dict):
        raise OpenAIError(400, "The request body must be a JSON object", code="invalid_json")
    return fields


def _read_urlencoded(body: bytes, files: Mapping[str, int]) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, errors="strict",
                                       max_num_fields=MAX_FIELDS)
    except ValueError as exc:  # not UTF-8, too many fields
        raise OpenAIError(400, f"invalid urlencoded form body: {exc}", code="invalid_form") from exc
    fields: dict[str, Any] = {}
    for key, value in pairs:
        _add_field(fields, key, value, files)
    return fields


def _add_field(fields: dict[str, Any], key: str, value: str, files: Mapping[str, int]) -> None:
    """One text field of a form into `fields`: `name[]` appends to a list, a file field is refused."""
    name = key.removesuffix("[]")
    if key.split("[")[0] in files:
        raise not_a_file(key.split("[")[0])
    if name in fields and (name == key or not isinstance(fields[name], list)):
        raise OpenAIError(400, f"'{name}' is given more than once", param=name, code="invalid_value")
    if name == key:
        fields[key] = value
    else:
        fields.setdefault(name, []).append(value)


def not_a_file(name: str) -> OpenAIError:
    return OpenAIError(400, f"{name} must be an uploaded image file; references by URL or file id are not "
                       "supported", param=name, code="invalid_value")


async def _read_multipart(request: Request, stream: AsyncGenerator[bytes, None], files: Mapping[str, int],
                          param: str) -> Form:
    # One file past the total, so that too many of one field is reported by name below.
    parser = MultiPartParser(request.headers, stream, max_files=sum(files.values()) + 1, max_fields=MAX_FIELDS,
                             max_part_size=FIELDS_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise OpenAIError(400, f"too many files: at most {_counts(files)}", param=param,
                              code="invalid_value") from exc
        raise OpenAIError(400, f"invalid multipart body: {exc.message}", code="invalid_multipart") from exc
    try:
        fields: dict[str, Any] = {}
        uploads: dict[str, list[bytes]] = {}
        for key, value in form.multi_items():
            name = key.removesuffix("[]")
            if isinstance(value, UploadFile):
                if name not in files:
                    raise OpenAIError(400, f"Unrecognized file field: {key} (only {_counts(files)})",
                                      param=key, code="unknown_parameter")
                uploads.setdefault(name, []).append(await value.read())
                if len(uploads[name]) > files[name]:
                    raise OpenAIError(400, f"'{name}' is given more than once" if files[name] == 1 else
                                      f"at most {files[name]} {name} files are accepted", param=name,
                                      code="invalid_value")
            else:
                _add_field(fields, key, value, files)
    finally:
        await form.close()
    return Form(fields, uploads)


def _counts(files: Mapping[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in files.items()) + " file(s)"


@contextmanager
def opened_image(data: bytes, *, max_pixels: int, param: str, name: str | None = None) -> Iterator[Image.Image]:
    """An uploaded image, opened lazily (header only) and checked to be at most `max_pixels` before the
    caller decodes it; every decoding failure inside the block is an InvalidRequestError naming `param`
    (and `name`, e.g. "image 2", in its message)."""
    name = name or param
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequestError(f"{name} is {width}x{height} = {width * height} pixels; at most "
                                          f"{max_pixels} are accepted (DGATE_MAX_INPUT_PIXELS)", param)
            yield image
    except InvalidRequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequestError(f"{name} is refused as a decompression bomb: {exc}", param) from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequestError(f"{name} is not a PNG, JPEG, WebP, GIF or BMP image", param) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidRequestError(f"{name} could not be decoded: {exc}", param) from exc


def parse_fields(model: type[M], fields: dict[str, Any]) -> M:
    """Form or JSON fields -> `model`; pydantic's errors as FastAPI's, so the one error mapper names the field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *_field_loc(error["loc"], fields))}
                                      for error in exc.errors()]) from exc


def _field_loc(loc: tuple[int | str, ...], fields: dict[str, Any]) -> tuple[int | str, ...]:
    # A text value has no parts: what follows its name is pydantic's union member (`lora_scale.float`).
    return loc[:1] if loc and isinstance(fields.get(str(loc[0])), str) else loc


def decode_rgb(data: bytes, *, max_pixels: int, param: str) -> np.ndarray:
    """An uploaded image -> uint8 RGB [H, W, 3] (see `opened_image`). CPU-bound."""
    with opened_image(data, max_pixels=max_pixels, param=param) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
