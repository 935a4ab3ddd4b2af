"""Prompt tokenization exactly as the diffusers pipelines do it (padded to the encoder's length)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase


class PromptTokenizer:
    """Turns (prompt, negative prompt) into the two padded rows the text encoder consumes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_directory(cls, tokenizer_dir: Path, max_length: int) -> PromptTokenizer:
        return cls(AutoTokenizer.from_pretrained(str(tokenizer_dir)), max_length)

    def __call__(self, prompt: str, negative_prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (input_ids, attention_mask), each int64 [2, max_length]; row 0 is the negative prompt.

        Both pipelines pad to max_length and truncate; SD ignores the mask, T5-based ones use it.
        """
        encoded = self.tokenizer(
            [negative_prompt, prompt],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
