"""A tiny synthetic captioned dataset (coloured shapes drawn with PIL), deterministic by seed, for tests
and the tiny configs: no download, and the captions say exactly what is in each image."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 30), "orange": (240, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


def _draw(shape: str, color: tuple[int, int, int], background: tuple[int, int, int], size: int,
          rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size * 2 // 3)
    left, top = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (left, top, left + extent, top + extent)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(left + extent // 2, top), (left, top + extent), (left + extent, top + extent)], fill=color)
    return image


def make_dataset(out: Path, count: int, size: int = 64, seed: int = 0,
                 captions: Literal["txt", "jsonl"] = "txt", prefix: str = "") -> list[Path]:
    """Write `count` images `out/NNNN.png` with captions ("a red circle on a blue background", after
    `prefix`) as `NNNN.txt` files or one metadata.jsonl; return the image paths."""
    if count <= 0 or size <= 0:
        raise ValueError("count and size must be > 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLORS)
    paths, records = [], []
    for index in range(count):
        shape = rng.choice(SHAPES)
        color, background = rng.sample(names, 2)
        image = _draw(shape, COLORS[color], COLORS[background], size, rng)
        path = out / f"{index:04d}.png"
        image.save(path)
        caption = f"{prefix}a {color} {shape} on a {background} background"
        if captions == "txt":
            path.with_suffix(".txt").write_text(caption + "\n", "utf-8")
        records.append({"file_name": path.name, "text": caption})
        paths.append(path)
    if captions == "jsonl":
        (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    return paths
