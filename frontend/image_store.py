"""Image encoding (Pillow) and the short-lived store behind `response_format="url"`.

The `url` images are files `img_<hex>.<fmt>` in the shared assets directory (`DGATE_ASSETS_DIR`),
so any replica behind a load balancer serves any link. A file's expiry is its write time (its mtime,
which every replica can read) plus `ttl_s`; expired files are deleted when seen. The byte cap
applies to the files this replica wrote (other replicas' files are theirs to cap), oldest first.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dgate.frontend.assets import AssetStore

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


_IMAGE_ID = re.compile(r"img_[0-9a-f]{32}")
# Expired files of any replica are looked for at most this often (a directory scan).
COLLECT_EVERY_S = 60.0


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    content_type: str
    expires_at: float


class ImageStore:
    """`url` images by unguessable id until they expire (see the module docstring).

    Every call blocks on the directory (a write, an fsync, a glob: slow on a network volume), so the
    event loop calls `aput` and runs `get` and `collect` in threads; `put` is thread-safe.
    """

    def __init__(self, assets: AssetStore, ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._assets = assets
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock  # wall-clock: expiry is compared with file mtimes, shared across replicas
        self._mine: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, in write order
        self._bytes = 0
        self._collected_at = float("-inf")
        self._lock = threading.Lock()  # puts from several threads share this replica's byte count

    async def aput(self, data: bytes, fmt: str) -> str:
        """`put` in a worker thread, so a slow volume never stalls the event loop."""
        return await asyncio.to_thread(self.put, data, fmt)

    def put(self, data: bytes, fmt: str) -> str:
        """Blocking: store `data`, returning its id (from the event loop, call `aput`)."""
        with self._lock:
            return self._put(data, fmt)

    def _put(self, data: bytes, fmt: str) -> str:
        now = self._clock()
        if now - self._collected_at >= COLLECT_EVERY_S:
            self.collect()
        self._evict(incoming=len(data))
        image_id = f"img_{secrets.token_hex(16)}"
        name = f"{image_id}.{fmt}"
        path = self._assets.write(name, data)
        os.utime(path, (now, now))  # the expiry clock is this store's (a fake one in tests)
        self._mine[name] = len(data)
        self._bytes += len(data)
        return image_id

    def get(self, image_id: str) -> StoredImage | None:
        """The image, or None if the id is unknown, malformed or expired (then the file goes)."""
        if not _IMAGE_ID.fullmatch(image_id):
            return None
        for fmt, content_type in CONTENT_TYPES.items():
            name = f"{image_id}.{fmt}"
            path = self._assets.path(name)
            if path is None:
                continue
            try:
                expires_at = path.stat().st_mtime + self._ttl_s
                if expires_at <= self._clock():
                    self._assets.delete(name)
                    return None
                return StoredImage(path.read_bytes(), content_type, expires_at)
            except FileNotFoundError:  # collected by another replica meanwhile
                return None
        return None

    def remaining_s(self, item: StoredImage) -> float:
        return max(0.0, item.expires_at - self._clock())

    def collect(self) -> int:
        """Delete every expired `url` image in the directory (any replica's); returns how many."""
        self._collected_at = now = self._clock()
        removed = 0
        for path in self._assets.root.glob("img_*"):
            try:
                if path.stat().st_mtime + self._ttl_s <= now:
                    self._assets.delete(path.name)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _evict(self, incoming: int) -> None:
        """Forget this replica's expired files and drop its oldest ones past the byte cap."""
        now = self._clock()
        while self._mine:
            oldest, size = next(iter(self._mine.items()))
            path = self._assets.path(oldest)
            expired = path is None or _mtime(path) + self._ttl_s <= now
            if not expired and self._bytes + incoming <= self._max_bytes:
                break
            if not expired:
                logger.warning("url image store full (%d bytes): dropping %s early", self._max_bytes, oldest)
            self._assets.delete(oldest)
            del self._mine[oldest]
            self._bytes -= size


def _mtime(path: os.PathLike[str]) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return float("-inf")
