"""Video media: MP4 round trips, thumbnail, spritesheet and optical-flow frame interpolation (CPU, no server)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from dgate.frontend.video.encoding import (
    CONTENT_TYPES,
    decode_mp4,
    encode_mp4,
    probe_mp4,
    spritesheet,
    thumbnail,
)
from dgate.frontend.video.interpolation import FarnebackInterpolator, interpolate_frames, output_fps


def gradient_clip(frames: int = 16, height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth clip: colour gradients drifting by one level per frame (what H.264 compresses well)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [np.stack([x * 3 + t, y * 3 + 10, 200 - x - y + t], axis=-1) for t in range(frames)]
    ).astype(np.uint8)


BACKGROUND, SQUARE, SIDE, STEP = 20, 230, 12, 8


def square_clip(frames: int = 3, size: int = 64, start: int = 10) -> np.ndarray:
    """A bright 12x12 square moving STEP px right per frame on a dark background."""
    clip = np.full((frames, size, size, 3), BACKGROUND, np.uint8)
    for t in range(frames):
        x = start + t * STEP
        clip[t, 26 : 26 + SIDE, x : x + SIDE] = SQUARE
    return clip


def bright_square(frame: np.ndarray) -> tuple[int, float, float]:
    """(area, centre x, centre y) of the pixels at least 3/4 of the way from background to square."""
    mask = frame[..., 0].astype(np.float64) >= BACKGROUND + 0.75 * (SQUARE - BACKGROUND)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, float("nan"), float("nan")
    # +0.5: pixel k covers [k, k+1), so a square over columns [x, x+12) is centred at x+6.
    return int(mask.sum()), float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def shows_square_at(frame: np.ndarray, centre_x: float, centre_y: float) -> bool:
    """A whole square (at least 80% of its area at full brightness) centred within 2 px of the point."""
    area, x, y = bright_square(frame)
    return area >= 0.8 * SIDE * SIDE and abs(x - centre_x) <= 2 and abs(y - centre_y) <= 2


def top_level_atoms(data: bytes) -> list[str]:
    """The MP4's top-level box types in file order (32-bit sizes; 64-bit `size == 1` boxes too)."""
    atoms, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        assert size >= 8, (kind, size)
        atoms.append(kind)
        offset += size
    assert offset == len(data)
    return atoms


# --- MP4 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [8, 7, 24, 24000 / 1001, Fraction(30000, 1001), np.float64(12.5)])
def test_mp4_round_trip_keeps_count_rate_size_and_duration(fps: float | Fraction) -> None:
    clip = gradient_clip(frames=16, height=48, width=64)
    data = encode_mp4(clip, fps)
    info = probe_mp4(data)
    assert info.codec == "h264"
    assert info.frames == 16
    assert info.fps == pytest.approx(float(fps), rel=1e-9)  # exact: 24000/1001 too
    assert (info.width, info.height) == (64, 48)
    assert abs(info.duration_s - 16 / float(fps)) < 1 / float(fps)
    assert info.duration_s == pytest.approx(16 / float(fps), abs=1e-3)  # and in fact exact to the timescale


def test_mp4_is_faststart_and_pixels_survive_h264() -> None:
    clip = gradient_clip()
    data = encode_mp4(clip, 8, crf=18)
    # ftyp first, then moov before mdat: a browser can start playing before the whole file arrives.
    atoms = top_level_atoms(data)
    assert atoms[0] == "ftyp" and atoms.index("moov") < atoms.index("mdat"), atoms
    decoded = decode_mp4(data)
    assert decoded.shape == clip.shape and decoded.dtype == np.uint8
    # Tolerance: mean absolute error under 3/255 per channel on a smooth gradient at crf 18
    # (measured ~1.1/255: yuv420p chroma subsampling plus H.264 quantisation).
    assert np.abs(decoded.astype(np.int16) - clip).mean() < 3
    assert CONTENT_TYPES["video"] == "video/mp4"


def test_mp4_single_frame_lasts_one_frame() -> None:
    info = probe_mp4(encode_mp4(gradient_clip(frames=1, height=16, width=16), 24))
    assert (info.frames, info.width, info.height) == (1, 16, 16)
    assert info.duration_s == pytest.approx(1 / 24, abs=1e-3)


def test_mp4_refuses_odd_sizes_wrong_dtype_shape_and_rate() -> None:
    clip = gradient_clip(frames=4)
    with pytest.raises(ValueError, match="63x64"):
        encode_mp4(clip[:, :, :63], 8)
    with pytest.raises(ValueError, match="64x63"):
        encode_mp4(clip[:, :63], 8)
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(clip.astype(np.float32) / 255, 8)
    with pytest.raises(ValueError, match="shape"):
        encode_mp4(clip[0], 8)
    with pytest.raises(ValueError, match="empty"):
        encode_mp4(clip[:0], 8)
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(clip, 0)
    with pytest.raises(ValueError, match="crf"):
        encode_mp4(clip, 8, crf=0)


# --- thumbnail and spritesheet --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_thumbnail_is_the_middle_frame(fmt: str) -> None:
    clip = gradient_clip(frames=9)
    clip[4, :8, :8] = 255  # mark the middle frame
    data = thumbnail(clip, fmt)  # type: ignore[arg-type]
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == fmt.upper()
        assert image.size == (64, 64)
        pixels = np.asarray(image.convert("RGB"))
    assert np.abs(pixels.astype(np.int16) - clip[4]).mean() < 4
    assert np.abs(pixels.astype(np.int16) - clip[0]).mean() > np.abs(pixels.astype(np.int16) - clip[4]).mean()
    assert CONTENT_TYPES["thumbnail"] == "image/webp"


def test_spritesheet_tiles_the_sampled_frames() -> None:
    clip = gradient_clip(frames=40, height=32, width=48)
    clip[:, :16, :16] = np.arange(40, dtype=np.uint8)[:, None, None, None] * 6  # a grey per-frame tag
    data, layout = spritesheet(clip, max_frames=16)
    assert (layout.columns, layout.rows, layout.tile_width, layout.tile_height) == (4, 4, 48, 32)
    assert len(layout.frame_indices) == 16
    assert layout.frame_indices[0] == 0 and layout.frame_indices[-1] == 39
    assert list(layout.frame_indices) == sorted(set(layout.frame_indices))
    assert np.all(np.diff(layout.frame_indices) >= 2) and np.all(np.diff(layout.frame_indices) <= 3)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (layout.columns * layout.tile_width, layout.rows * layout.tile_height)
        sheet = np.asarray(image.convert("RGB")).astype(np.int16)
    for slot, index in enumerate(layout.frame_indices):
        row, column = divmod(slot, layout.columns)
        tile = sheet[row * 32 : (row + 1) * 32, column * 48 : (column + 1) * 48]
        # JPEG at quality 85: the tile matches its frame (mean error < 4/255), and the middle of its
        # tag (one 16x16 JPEG block) is within 4 levels of the frame's: the neighbouring samples'
        # tags are 12 or more apart, so this pins the frame index.
        assert np.abs(tile - clip[index]).mean() < 4, (slot, index)
        assert abs(tile[4:12, 4:12].mean() - index * 6) < 4, (slot, index, tile[4:12, 4:12].mean())
    assert CONTENT_TYPES["spritesheet"] == "image/jpeg"


def test_spritesheet_few_frames_columns_and_downscale() -> None:
    clip = gradient_clip(frames=5, height=32, width=64)
    data, layout = spritesheet(clip, columns=2, tile_width=32, fmt="png")
    assert (layout.columns, layout.rows, layout.tile_width, layout.tile_height) == (2, 3, 32, 16)
    assert layout.frame_indices == (0, 1, 2, 3, 4)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (64, 48)
        sheet = np.asarray(image.convert("RGB")).astype(np.int16)
    for slot, index in enumerate(layout.frame_indices):
        row, column = divmod(slot, 2)
        tile = sheet[row * 16 : (row + 1) * 16, column * 32 : (column + 1) * 32]
        expected = np.asarray(Image.fromarray(clip[index]).resize((32, 16), Image.Resampling.BOX)).astype(np.int16)
        assert np.abs(tile - expected).mean() < 2  # a different resampling filter, lossless PNG
    assert not sheet[32:, 32:].any()  # the sixth cell is empty and black
    _, wide = spritesheet(clip, columns=9)
    assert (wide.columns, wide.rows) == (5, 1)
    with pytest.raises(ValueError, match="max_frames"):
        spritesheet(clip, max_frames=0)


# --- interpolation --------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_interpolation_length_and_originals_exact(factor: int) -> None:
    clip = gradient_clip(frames=5)
    out = interpolate_frames(clip, factor)
    assert out.shape == ((5 - 1) * factor + 1, 64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out[::factor], clip)
    assert output_fps(8, factor) == 8 * factor
    assert interpolate_frames(clip[:1], factor).shape == (1, 64, 64, 3)


def test_interpolation_moves_the_square_where_a_cross_fade_does_not() -> None:
    clip = square_clip(frames=3)  # square at x = 10, 18, 26 (centres 16, 24, 32), y centre 32
    out = interpolate_frames(clip, 2)
    cross_fade = ((clip[0].astype(np.float64) + clip[1]) / 2).round().astype(np.uint8)
    # Midway between centres 16 and 24: the whole square, centred at 20.
    assert shows_square_at(out[1], 20, 32), bright_square(out[1])
    assert shows_square_at(out[3], 28, 32), bright_square(out[3])
    # A cross-fade's intensity centroid is at 20 as well, but it shows two half-bright squares:
    # only their 4 px overlap is bright, so the check above is one a blend cannot pass.
    assert not shows_square_at(cross_fade, 20, 32), bright_square(cross_fade)

    quarter = interpolate_frames(clip, 4)
    for j, centre in zip(range(1, 4), (18, 20, 22), strict=True):
        assert shows_square_at(quarter[j], centre, 32), (j, bright_square(quarter[j]))


def test_interpolator_is_pluggable_and_bad_factors_refused() -> None:
    calls: list[float] = []

    def midpoint_blend(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
        calls.append(t)
        return ((1 - t) * a + t * b.astype(np.float64)).round().astype(np.uint8)

    clip = square_clip(frames=3)
    out = interpolate_frames(clip, 4, interpolator=midpoint_blend)
    assert calls == [0.25, 0.5, 0.75] * 2 and out.shape[0] == 9
    assert isinstance(FarnebackInterpolator()(clip[0], clip[1], 0.5), np.ndarray)
    for factor in (3, 0, 8, True):
        with pytest.raises(ValueError, match="factor"):
            interpolate_frames(clip, factor)
    with pytest.raises(ValueError, match="factor"):
        output_fps(8, 3)
    with pytest.raises(ValueError, match="uint8"):
        interpolate_frames(clip.astype(np.float32), 2)
