"""Prompt tokenization exactly as the diffusers pipelines do it, with only the `tokenizers` library.

Export saves each of the pipeline's tokenizers as one `tokenizer.json` (the fast tokenizer's own
serialisation); the tokenizer model loads it with `tokenizers` alone: importing transformers (and
with it torch) cost ~280 MB per tokenizer instance. The pipelines all call
`tokenizer(texts, padding="max_length", max_length=L, truncation=True)`; here that is truncation to
L (special tokens included) and right padding with the tokenizer's pad id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


def save_prompt_tokenizer(hf_tokenizer: Any, directory: Path) -> Path:
    """Write a transformers (fast) tokenizer as `directory/tokenizer.json`, padding/truncation off."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(hf_tokenizer).__name__} has no fast (tokenizers) backend to export")
    if getattr(hf_tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"{type(hf_tokenizer).__name__} pads on the {hf_tokenizer.padding_side}; "
                         "the pipelines served here pad on the right")
    tokenizer = _plain_copy(backend)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


def _plain_copy(backend: Tokenizer) -> Tokenizer:
    """A copy of a fast tokenizer's backend with padding and truncation off (we set them per call)."""
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class PromptTokenizer:
    """Turns texts into padded (input_ids, attention_mask) rows of a requested length."""

    def __init__(self, tokenizer: Tokenizer, pad_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id

    @classmethod
    def from_directory(cls, directory: Path, pad_token_id: int) -> PromptTokenizer:
        return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), pad_token_id)

    @classmethod
    def from_transformers(cls, hf_tokenizer: Any, pad_token_id: int) -> PromptTokenizer:
        """The same tokenizer from a loaded transformers tokenizer (without touching its state)."""
        return cls(_plain_copy(hf_tokenizer.backend_tokenizer), pad_token_id)

    def __call__(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """int64 input_ids and attention_mask, each [len(texts), max_length]."""
        self.tokenizer.enable_truncation(max_length)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.full((len(texts), max_length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), max_length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask
