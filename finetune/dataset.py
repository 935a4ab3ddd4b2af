"""Captioned image folders → pixel tensors, and the order in which training visits them.

The order is a pure function of (seed, position in the stream), not an iterator's state: a resumed run
recomputes exactly the batches an uninterrupted one would have seen, with nothing to checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on."""


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(folder: Path, require_captions: bool = True) -> list[Example]:
    """The examples of `folder`: a metadata.jsonl (`file_name`, `text`) if there is one, otherwise every
    image with its caption in a `.txt` beside it. Without `require_captions` (DreamBooth, whose prompt is
    fixed) captions may be missing and are read as ""."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder} (`dgate finetune make-dataset` writes a tiny one)")
    metadata = folder / "metadata.jsonl"
    examples: list[Example] = []
    if metadata.is_file():
        for number, line in enumerate(metadata.read_text("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name, text = record["file_name"], record.get("text", "")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DatasetError(f"{metadata}:{number}: expected {{\"file_name\": ..., \"text\": ...}}") from error
            if not (folder / name).is_file():
                raise DatasetError(f"{metadata}:{number}: no image {folder / name}")
            if require_captions and not text:
                raise DatasetError(f"{metadata}:{number}: empty caption for {name}")
            examples.append(Example(folder / name, str(text)))
    else:
        for image in images_in(folder):
            sidecar = image.with_suffix(".txt")
            if sidecar.is_file():
                examples.append(Example(image, sidecar.read_text("utf-8").strip()))
            elif require_captions:
                raise DatasetError(f"no caption for {image}: write {sidecar.name} beside it or a metadata.jsonl")
            else:
                examples.append(Example(image, ""))
    if not examples:
        raise DatasetError(f"no images in {folder} (expected {', '.join(IMAGE_SUFFIXES)})")
    return examples


@dataclass(frozen=True)
class Prepared:
    """One image as the model sees it, with what SDXL's size conditioning needs to know about it."""

    pixels: torch.Tensor  # (3, resolution, resolution) in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]


def prepare_image(path: Path, resolution: int, center_crop: bool = True) -> Prepared:
    """Resize the short side to `resolution`, then crop a square (centred, or the top-left corner)."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    resized = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(resized, Image.Resampling.BILINEAR)
    top = (resized[1] - resolution) // 2 if center_crop else 0
    left = (resized[0] - resolution) // 2 if center_crop else 0
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return Prepared(pixels, (height, width), (top, left))


class ImageCaptionDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example], resolution: int, center_crop: bool = True) -> None:
        self.examples = list(examples)
        self.resolution = resolution
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, object]:
        example = self.examples[index]
        prepared = prepare_image(example.image, self.resolution, self.center_crop)
        return {"pixels": prepared.pixels, "caption": example.caption,
                "original_size": prepared.original_size, "crop_top_left": prepared.crop_top_left}


def collate(items: list[dict[str, object]]) -> dict[str, object]:
    return {
        "pixels": torch.stack([item["pixels"] for item in items]),  # type: ignore[misc]
        "captions": [item["caption"] for item in items],
        "original_sizes": [item["original_size"] for item in items],
        "crop_top_lefts": [item["crop_top_left"] for item in items],
    }


class StreamBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of `batch_size` indices into `length` examples, from batch number `start` on.

    The stream is an endless concatenation of one permutation per epoch, permutation e drawn from
    `seed + e`; batch b is the stream's items [b * batch_size, (b + 1) * batch_size). Every batch is full
    (batches run across epoch boundaries) and batch b is the same whether or not the run was resumed."""

    def __init__(self, length: int, batch_size: int, seed: int, start: int = 0, stop: int | None = None) -> None:
        self.length, self.batch_size, self.seed, self.start, self.stop = length, batch_size, seed, start, stop
        self._epochs: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epochs[epoch] = torch.randperm(self.length, generator=generator).tolist()
            if len(self._epochs) > 2:  # a batch spans at most two epochs
                del self._epochs[min(self._epochs)]
        return self._epochs[epoch]

    def batch(self, number: int) -> list[int]:
        first = number * self.batch_size
        return [self._permutation(item // self.length)[item % self.length]
                for item in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        number = self.start
        while self.stop is None or number < self.stop:
            yield self.batch(number)
            number += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless stream has no length")
        return max(0, self.stop - self.start)
