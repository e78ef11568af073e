"""Text -> padded id batches, identical in training, export, parity and serving.

Special ids: 0 = [PAD], 1 = [UNK]. A text with no tokens (empty, whitespace or only characters
the normaliser drops) is encoded as a single [UNK] so that no sequence has length 0 (onnxruntime
returns garbage for a 0-length sequence). Texts longer than ``max_len`` keep their first
``max_len`` tokens and are counted as truncated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN]


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # (B, T) int64, right-padded with PAD_ID, T = max(lengths)
    lengths: np.ndarray  # (B,) int64, every value in [1, max_len]
    truncated: np.ndarray  # (B,) bool: the text had more than max_len tokens

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


class TextEncoder:
    """Wraps a HuggingFace ``tokenizers`` tokenizer plus the model's maximum length."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
            raise ValueError(f"tokenizer must map {PAD_TOKEN}->{PAD_ID} and {UNK_TOKEN}->{UNK_ID}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    @classmethod
    def from_file(cls, path: str | Path, max_len: int) -> "TextEncoder":
        return cls(Tokenizer.from_file(str(path)), max_len)

    @classmethod
    def from_json(cls, tokenizer_json: str, max_len: int) -> "TextEncoder":
        return cls(Tokenizer.from_str(tokenizer_json), max_len)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Untruncated ids per text (no special tokens added).

        ``encode_batch_fast`` gives the same ids as ``encode_batch`` without computing character
        offsets (unused here): ~20 % less time per text, and like ``encode_batch`` it releases the GIL."""
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_batch(self, texts: list[str]) -> EncodedBatch:
        if not texts:
            raise ValueError("encode_batch needs at least one text")
        all_ids = self.token_ids(texts)
        lengths = np.array([min(max(len(ids), 1), self.max_len) for ids in all_ids], dtype=np.int64)
        truncated = np.array([len(ids) > self.max_len for ids in all_ids], dtype=bool)
        input_ids = np.full((len(texts), int(lengths.max())), PAD_ID, dtype=np.int64)
        for row, ids in enumerate(all_ids):
            if ids:
                kept = ids[: self.max_len]
                input_ids[row, : len(kept)] = kept
            else:
                input_ids[row, 0] = UNK_ID
        return EncodedBatch(input_ids=input_ids, lengths=lengths, truncated=truncated)
