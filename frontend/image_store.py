"""Image encoding (Pillow) and the short-lived in-memory store behind `response_format="url"`.

The store lives in process memory: `url` images are a convenience for clients that cannot take
base64, they expire after `ttl_s`, and a memory cap evicts the oldest first. A frontend replica
serves only the links it issued, so behind a load balancer use sticky sessions or `b64_json`.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: np.ndarray, fmt: str, compression: int | None = None) -> bytes:
    """One uint8 HxWx3 array -> file bytes. `compression` is the JPEG/WebP quality (OpenAI's 0..100)."""
    options: dict[str, object] = {}
    if fmt in ("jpeg", "webp"):
        options["quality"] = 100 if compression is None else compression
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


def encode_batch(images: np.ndarray, fmt: str, compression: int | None = None) -> list[bytes]:
    """CPU-bound: call through `asyncio.to_thread` (Pillow releases the GIL while compressing)."""
    return [encode_image(np.ascontiguousarray(image), fmt, compression) for image in images]


def to_base64(blobs: list[bytes]) -> list[str]:
    return [base64.b64encode(blob).decode("ascii") for blob in blobs]


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    content_type: str
    expires_at: float


class ImageStore:
    """Images by unguessable id until they expire; only touched from the event loop (no locking)."""

    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()  # insertion order == expiry order
        self._bytes = 0

    def put(self, data: bytes, fmt: str) -> str:
        self._evict(incoming=len(data))
        image_id = f"img_{secrets.token_hex(16)}"
        self._items[image_id] = StoredImage(data, CONTENT_TYPES[fmt], self._clock() + self._ttl_s)
        self._bytes += len(data)
        return image_id

    def get(self, image_id: str) -> StoredImage | None:
        self._evict()
        return self._items.get(image_id)

    def remaining_s(self, item: StoredImage) -> float:
        return max(0.0, item.expires_at - self._clock())

    def _evict(self, incoming: int = 0) -> None:
        now = self._clock()
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if oldest.expires_at > now and self._bytes + incoming <= self._max_bytes:
                break
            if oldest.expires_at > now:
                logger.warning(
                    "url image store full (%d bytes): dropping %s early", self._max_bytes, oldest_id
                )
            del self._items[oldest_id]
            self._bytes -= len(oldest.data)
