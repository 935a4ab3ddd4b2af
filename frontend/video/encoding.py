"""The media behind `GET /v1/videos/{id}/content`: H.264 MP4, a thumbnail and a hover spritesheet.

Frames arrive from the server as one uint8 RGB array `[F, H, W, 3]`. Everything here is a pure,
CPU-bound function over that array (callers run it in `asyncio.to_thread`) and works in memory:
no temporary files, no network, no torch.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation
from PIL import Image

# What each `variant` of GET /v1/videos/{id}/content is served as (the defaults below).
CONTENT_TYPES = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}

ImageFormat = Literal["webp", "jpeg", "png"]
_PIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}
_RESAMPLE = Image.Resampling.LANCZOS

# libx264's default speed/size trade-off; clips are short, so a slower preset buys little.
_PRESET = "medium"
# Fractional rates such as 24000/1001 survive the float round trip with denominators up to 1001.
_MAX_RATE_DENOMINATOR = 1001
# RGB -> yuv420p as BT.709 limited range, and the stream tagged so: browsers assume BT.709 for
# untagged video, and FFmpeg's untagged default (BT.601) would shift the colours slightly.
_ENCODE_SCALING = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
# swscale's default 4:2:0 -> RGB path barely interpolates chroma; full chroma interpolation makes
# decode_mp4 a faithful reference (a smooth 64x64 gradient: ~1.6/255 mean error -> ~0.3/255).
_DECODE_SCALING = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


@dataclass(frozen=True)
class VideoInfo:
    """What a decoded MP4 holds: the checks compare it with what was encoded."""

    frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


@dataclass(frozen=True)
class SpriteSheetLayout:
    """How a spritesheet is tiled, so a player can map a hover position to a frame.

    Tile `i` (row-major) sits at `((i % columns) * tile_width, (i // columns) * tile_height)` and shows
    frame `frame_indices[i]` of the clip; cells past `len(frame_indices)` are black.
    """

    columns: int
    rows: int
    tile_width: int
    tile_height: int
    frame_indices: tuple[int, ...]


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3] (RGB), got {list(frames.shape)}")
    if 0 in frames.shape:
        raise ValueError(f"frames must not be empty, got shape {list(frames.shape)}")


def _frame_rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    return Fraction(float(fps)).limit_denominator(_MAX_RATE_DENOMINATOR)


class _ReadView:
    """A second, read-only cursor over the BytesIO being written.

    `+faststart` moves the moov atom in front of the media data when the muxer finishes, and FFmpeg
    does that by opening the output again for reading. For in-memory output PyAV hands that open to
    `io_open`; this view reads the same buffer with a position of its own and leaves the writer's
    position where it was, since the writer appends wherever the buffer's position is.
    """

    def __init__(self, buffer: io.BytesIO) -> None:
        self._buffer = buffer
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        elif whence == io.SEEK_END:
            self._position = len(self._buffer.getbuffer()) + offset
        else:
            raise ValueError(f"unsupported whence {whence}")
        return self._position

    def read(self, size: int = -1) -> bytes:
        writer_position = self._buffer.tell()
        try:
            self._buffer.seek(self._position)
            data = self._buffer.read(size)
        finally:
            self._buffer.seek(writer_position)
        self._position += len(data)
        return data

    def close(self) -> None:
        pass


def encode_mp4(frames: np.ndarray, fps: float | Fraction, *, crf: int = 18) -> bytes:
    """Frames -> H.264 (libx264, yuv420p, BT.709) in an MP4 whose moov atom comes first.

    The stream's time base is exactly 1/fps and frame `i` has pts `i`, so every frame lasts exactly
    1/fps and the clip F/fps, with fractional rates (24000/1001) kept exact (the MP4 muxer may pick a
    finer track timescale, e.g. 1/16384 s at 8 fps, in which each frame is still a whole 2048 ticks). `crf` is libx264's
    quality (lower is better, 18 is visually near-lossless); 0 is refused because lossless H.264
    needs the High 4:4:4 Predictive profile, which browsers do not play. Width and height must be
    even (4:2:0 chroma); the server only produces multiples of 8, so odd sizes are a caller bug.
    """
    _check_frames(frames)
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even width and height, got {width}x{height}")
    rate = _frame_rate(fps)
    if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 1 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 1..51, got {crf!r}")
    crf = int(crf)
    time_base = 1 / rate

    buffer = io.BytesIO()
    with av.open(
        buffer, "w", format="mp4", options={"movflags": "+faststart"}, io_open=lambda *_: _ReadView(buffer)
    ) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.colorspace = Colorspace.ITU709
        stream.codec_context.color_primaries = ColorPrimaries.BT709
        stream.codec_context.color_trc = ColorTrc.BT709
        stream.codec_context.color_range = ColorRange.MPEG
        stream.options = {"crf": str(crf), "preset": _PRESET}
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]), format="rgb24").reformat(
                format="yuv420p",
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
                interpolation=_ENCODE_SCALING,
            )
            frame.pts = index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _decode(data: bytes, on_frame: Callable[[av.VideoFrame], None]) -> VideoInfo:
    with av.open(io.BytesIO(data), "r") as container:
        if not container.streams.video:
            raise ValueError("the data holds no video stream")
        stream = container.streams.video[0]
        count = 0
        for frame in container.decode(stream):
            on_frame(frame)
            count += 1
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        else:
            duration_s = count / float(rate) if rate else 0.0
        return VideoInfo(
            frames=count,
            fps=float(rate) if rate else 0.0,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration_s=duration_s,
            codec=stream.codec_context.name,
        )


def probe_mp4(data: bytes) -> VideoInfo:
    """Frame count (by decoding every frame, not the header's claim), rate, size, duration and codec."""
    return _decode(data, lambda _: None)


def decode_mp4(data: bytes) -> np.ndarray:
    """MP4 bytes -> uint8 RGB `[F, H, W, 3]`, converting with the colour tags the stream carries."""
    decoded: list[np.ndarray] = []

    def keep(frame: av.VideoFrame) -> None:
        decoded.append(frame.reformat(format="rgb24", interpolation=_DECODE_SCALING).to_ndarray())

    _decode(data, keep)
    if not decoded:
        raise ValueError("the video holds no frames")
    return np.stack(decoded)


def _encode_image(image: np.ndarray, fmt: ImageFormat, quality: int) -> bytes:
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(_PIL_FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    options: dict[str, object] = {} if fmt == "png" else {"quality": quality}
    out = io.BytesIO()
    Image.fromarray(image, "RGB").save(out, format=_PIL_FORMATS[fmt], **options)
    return out.getvalue()


def thumbnail(frames: np.ndarray, fmt: ImageFormat = "webp", quality: int = 90) -> bytes:
    """The middle frame as an image.

    The middle rather than the first: in image-to-video the first frame is the input image itself,
    so it would show nothing the model made; the middle frame is representative of the motion.
    """
    _check_frames(frames)
    return _encode_image(np.ascontiguousarray(frames[len(frames) // 2]), fmt, quality)


def spritesheet(
    frames: np.ndarray,
    *,
    columns: int | None = None,
    max_frames: int = 16,
    tile_width: int | None = None,
    fmt: ImageFormat = "jpeg",
    quality: int = 85,
) -> tuple[bytes, SpriteSheetLayout]:
    """Up to `max_frames` evenly spaced frames (first and last included) tiled row-major in one image.

    `columns` defaults to ceil(sqrt(n)) for a near-square sheet; `tile_width` downscales every tile
    (Lanczos, aspect kept) so a long clip's sheet stays small. Returns the bytes and the layout
    a player needs to map a hover position to a frame.
    """
    _check_frames(frames)
    count, height, width, _ = frames.shape
    if isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    n = min(int(max_frames), count)
    if columns is None:
        columns = math.ceil(math.sqrt(n))
    elif isinstance(columns, bool) or not isinstance(columns, numbers.Integral) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    columns = min(int(columns), n)  # no all-empty columns
    rows = math.ceil(n / columns)
    if tile_width is None:
        tile_w, tile_h = width, height
    elif isinstance(tile_width, bool) or not isinstance(tile_width, numbers.Integral) or tile_width < 1:
        raise ValueError(f"tile_width must be a positive integer, got {tile_width!r}")
    else:
        tile_w, tile_h = int(tile_width), max(1, round(height * int(tile_width) / width))

    # Evenly spaced over the whole clip; with n <= count the rounded positions are distinct.
    indices = tuple(int(i) for i in np.linspace(0, count - 1, n).round())
    sheet = np.zeros((rows * tile_h, columns * tile_w, 3), np.uint8)
    for slot, index in enumerate(indices):
        tile = frames[index]
        if (tile_w, tile_h) != (width, height):
            tile = np.asarray(Image.fromarray(np.ascontiguousarray(tile), "RGB").resize((tile_w, tile_h), _RESAMPLE))
        row, column = divmod(slot, columns)
        sheet[row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w] = tile
    layout = SpriteSheetLayout(columns, rows, tile_w, tile_h, indices)
    return _encode_image(sheet, fmt, quality), layout
