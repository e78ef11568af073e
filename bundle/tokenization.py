"""Text -> token ids, identical in training, export, parity and serving.

Special ids: 0 = [PAD], 1 = [UNK]. A text with no tokens (empty, whitespace or only characters
the normaliser drops) is encoded as a single [UNK] so that no sequence has length 0 (onnxruntime
returns garbage for a 0-length sequence). Texts longer than ``max_len`` keep their first
``max_len`` tokens and are counted as truncated.

Bounded work (docs/service.md "Bounded work per text"): a text is never normalised and
tokenized in full. ``encode`` tokenizes a prefix of at most ``char_budget = CHARS_PER_TOKEN *
max_len`` characters, cut at an ASCII whitespace so the prefix's tokens are exactly the full
text's first tokens (whitespace is a normalisation and pre-tokenization boundary), and grows the
prefix only while it holds too few tokens; where there is no whitespace the prefix is cut
mid-word. The characters handed to the tokenizer per text are at most about ``2 * char_budget``;
NFKC expands a character at most 18-fold, so the normalised work is O(max_len) per text
whatever the text holds. A text whose first ``max_len`` tokens fit in the budget (its prefix up
to the last ASCII whitespace within the budget holds more than ``max_len`` tokens, or it is
within the budget) gets exactly the ids and the truncated flag of tokenizing it in full
(tests/training/test_tokenizer.py::test_bounded_encoding_keeps_the_ids_of_texts_within_budget); any
other text is classified from its prefix and flagged truncated.

ASCII fast path: for the pipeline this project trains (training/tokenizer.py: NFKC, Lowercase,
BertPreTokenizer, WordLevel), an ASCII text's tokens are its lowercased runs of characters that are
neither ASCII whitespace (as Rust's ``char::is_whitespace``: tab, LF, VT, FF, CR, space) nor ASCII
punctuation (``char::is_ascii_punctuation``), and each punctuation mark alone; NFKC leaves ASCII as
it is. The same holds for texts that also hold Latin-1 letters and signs NFKC leaves alone and the
pre-tokenizer keeps inside words ("£", "é", "É", "ß", ...: ``latin1_word_characters``, each checked
against the bundle's own tokenizer when the encoder is built). ``token_ids`` computes those in
Python for small calls (at most ``FAST_PATH_MAX_CHARS`` characters: what the server tokenizes on its
event loop), 4-5x faster than a call into ``tokenizers`` for one text, with the same ids
(tests/training/test_tokenizer.py); any other text, one holding an added token's content
(``[PAD]``, ``[UNK]``), any other tokenizer and larger calls (which ``tokenizers`` runs without the
GIL) go to ``tokenizers``.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN]

# Characters a text may spend per token before it is cut: English news averages under 6
# (punctuation marks are tokens of their own), so 8 cuts only texts whose first max_len tokens
# are mostly very long words (URLs, no spaces); those are classified from their first
# char_budget characters and flagged truncated.
CHARS_PER_TOKEN = 8
# A prefix cut where there is no whitespace (mid-word, or mid-character-sequence for NFKC) may
# differ from the full text in the tokens at the cut (with our word-level tokenizer: the last
# two); it is trusted to hold the text's first max_len tokens once it holds this many more.
HARD_CUT_SLACK = 8
# Characters where a text may be cut without changing the tokens before the cut.
_CUT_CHARS = (" ", "\n", "\t", "\r")
# The ASCII fast path (module docstring): a call's texts are tokenized in Python up to this many
# characters in all; a larger call goes to tokenizers, which releases the GIL while it works.
FAST_PATH_MAX_CHARS = 4096
_ASCII_PUNCTUATION = r"!-/:-@\[-`{-~"  # the 32 marks of Rust's char::is_ascii_punctuation
_ASCII_TOKENS = re.compile(rf"[{_ASCII_PUNCTUATION}]|[^\t\n\x0b\x0c\r {_ASCII_PUNCTUATION}]+")
_TRAINED_PIPELINE = {
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
}


def latin1_word_characters(tokenizer: Tokenizer) -> str:
    """The Latin-1 characters (U+00A1-U+00FF) the ASCII fast path also takes: those NFKC leaves as
    they are and whose lowercase the pre-tokenizer keeps inside a word (letters, "£", "©", ...),
    each checked against ``tokenizer``'s own normalizer and pre-tokenizer."""
    kept = []
    for code in range(0xA1, 0x100):
        char = chr(code)
        lowered = char.lower()
        if (not unicodedata.is_normalized("NFKC", char) or unicodedata.category(char)[0] in "PZ"
                or len(lowered) != 1 or tokenizer.normalizer.normalize_str(char) != lowered):
            continue
        probe = f"a{lowered}b"
        if [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(probe)] == [probe]:
            kept.append(char)
    return "".join(kept)


def ascii_fast_path_vocab(tokenizer: Tokenizer) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """(vocabulary, added tokens' contents) when ``tokenizer`` is the pipeline the ASCII fast path
    reproduces (training/tokenizer.py's, unk = [UNK]), else None."""
    config = json.loads(tokenizer.to_str())
    model = config.get("model") or {}
    if any(config.get(key) != value for key, value in _TRAINED_PIPELINE.items()) or config.get("post_processor"):
        return None
    if model.get("type") != "WordLevel" or model.get("unk_token") != UNK_TOKEN:
        return None
    return dict(model["vocab"]), tuple(token["content"] for token in config.get("added_tokens") or ())


@dataclass(frozen=True)
class EncodedText:
    """One text's token ids, unpadded (ragged): padding happens once, per batch (``pad``)."""

    ids: np.ndarray  # (L,) int64, 1 <= L <= max_len
    truncated: bool  # the text had more than max_len tokens, or was cut at the character budget

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # (B, T) int64, right-padded with PAD_ID, T = max(lengths)
    lengths: np.ndarray  # (B,) int64, every value in [1, max_len]
    truncated: np.ndarray  # (B,) bool: the text had more than max_len tokens

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


def pad(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id rows -> (input_ids (B, T) right-padded with PAD_ID, lengths (B,)), T = longest row."""
    if len(rows) == 1:  # a lone request's batch: nothing to pad (the common case at low load)
        row = np.ascontiguousarray(rows[0], dtype=np.int64)
        return row.reshape(1, -1), np.array([row.shape[0]], dtype=np.int64)
    lengths = np.fromiter((r.shape[0] for r in rows), dtype=np.int64, count=len(rows))
    input_ids = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : row.shape[0]] = row
    return input_ids, lengths


def _last_cut(text: str, limit: int) -> int:
    """Index of the last cut character in ``text[:limit + 1]`` (0 when there is none: a text
    starting with whitespace has no tokens before it)."""
    return max(text.rfind(c, 0, limit + 1) for c in _CUT_CHARS)


class TextEncoder:
    """Wraps a HuggingFace ``tokenizers`` tokenizer plus the model's maximum length."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
            raise ValueError(f"tokenizer must map {PAD_TOKEN}->{PAD_ID} and {UNK_TOKEN}->{UNK_ID}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.char_budget = CHARS_PER_TOKEN * max_len
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        fast_path = ascii_fast_path_vocab(tokenizer)
        self._ascii_vocab, added_tokens = fast_path if fast_path is not None else (None, ())
        # lowercased: on the fast path's texts lowercasing maps character to character, so an added
        # token's content is in a text exactly when its lowercase is in the text's lowercase
        self._added_tokens_lowered = tuple(token.lower() for token in added_tokens)
        # a non-ASCII text takes the fast path when this finds nothing in it
        self._outside_fast_path = re.compile(
            f"[^\\x00-\\x7f{re.escape(latin1_word_characters(tokenizer)) if fast_path else ''}]")

    @classmethod
    def from_file(cls, path: str | Path, max_len: int) -> "TextEncoder":
        return cls(Tokenizer.from_file(str(path)), max_len)

    @classmethod
    def from_json(cls, tokenizer_json: str, max_len: int) -> "TextEncoder":
        return cls(Tokenizer.from_str(tokenizer_json), max_len)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def has_ascii_fast_path(self) -> bool:
        return self._ascii_vocab is not None

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated ids per text (no special tokens added), the whole text: unbounded work,
        so ``encode`` calls it with bounded prefixes only. ASCII texts of a small call take the
        ASCII fast path (module docstring), the others ``tokenizers``."""
        vocab = self._ascii_vocab
        if vocab is None or sum(len(text) for text in texts) > FAST_PATH_MAX_CHARS:
            return self._tokenizers_ids(texts)
        ids: list[list[int] | None] = []
        others: list[int] = []
        for i, text in enumerate(texts):
            tokens = self.fast_path_tokens(text)
            if tokens is None:
                ids.append(None)
                others.append(i)
            else:
                ids.append([vocab.get(token, UNK_ID) for token in tokens])
        if others:
            for i, row in zip(others, self._tokenizers_ids([texts[i] for i in others])):
                ids[i] = row
        return ids  # type: ignore[return-value]

    def fast_path_tokens(self, text: str) -> list[str] | None:
        """``text``'s tokens by the ASCII fast path, or None where it does not apply (module docstring)."""
        if self._ascii_vocab is None or not (text.isascii() or self._outside_fast_path.search(text) is None):
            return None
        lowered = text.lower()
        if any(token in lowered for token in self._added_tokens_lowered):
            return None
        return _ASCII_TOKENS.findall(lowered)

    def _tokenizers_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode_batch_fast`` gives the same ids as ``encode_batch`` without computing character
        offsets (unused here): ~20 % less time per text, and like ``encode_batch`` it releases the GIL."""
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Ragged ids per text, at most ``max_len`` each, with bounded work (module docstring).

        Rounds: every unfinished text is cut to at most ``limit`` characters, at its last ASCII
        whitespace, or at ``limit`` itself when it has none there, and the prefixes are tokenized
        together. A text within the budget starts with its whole length as the limit (one round,
        never more than ``char_budget`` characters); a longer one with ``max_len + 1``, the fewest
        characters that can hold more than ``max_len`` tokens. A text is finished when it was not
        cut, when its whitespace-cut prefix holds more than ``max_len`` tokens, when its hard-cut
        prefix holds more than ``max_len + HARD_CUT_SLACK`` (only the tokens at a hard cut can
        differ from the full text's), or in the last round (``limit == char_budget``); otherwise
        the next round's limit is extrapolated from the prefix's characters per token (at least
        doubling)."""
        results: list[EncodedText | None] = [None] * len(texts)
        budget, first = self.char_budget, min(self.char_budget, self.max_len + 1)
        limits = {i: len(text) if len(text) <= budget else first for i, text in enumerate(texts)}
        while limits:
            pieces: list[tuple[int, str, int]] = []  # (text index, prefix, tokens it must exceed to finish)
            for i, limit in limits.items():
                text = texts[i]
                if len(text) <= limit:
                    pieces.append((i, text, -1))
                    continue
                cut = _last_cut(text, limit)
                if cut > 0:
                    pieces.append((i, text[:cut], self.max_len))
                else:
                    pieces.append((i, text[:limit], self.max_len + HARD_CUT_SLACK))
            all_ids = self.token_ids([piece for _, piece, _ in pieces])
            for (i, piece, enough), ids in zip(pieces, all_ids):
                limit = limits[i]
                if len(ids) > enough or limit >= self.char_budget:
                    results[i] = self._row(ids, truncated=enough >= 0 or len(ids) > self.max_len)
                    del limits[i]
                else:
                    wanted = math.ceil(len(piece) * 1.25 * (self.max_len + 1) / max(len(ids), 1))
                    limits[i] = min(self.char_budget, max(2 * limit, wanted))
        return results  # type: ignore[return-value]

    def _row(self, ids: list[int], *, truncated: bool) -> EncodedText:
        kept = np.array(ids[: self.max_len] or [UNK_ID], dtype=np.int64)
        return EncodedText(kept, truncated)

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        """``encode`` padded into one batch (training, export and parity feed whole batches)."""
        if not texts:
            raise ValueError("encode_batch needs at least one text")
        encoded = self.encode(texts)
        input_ids, lengths = pad([e.ids for e in encoded])
        return EncodedBatch(input_ids=input_ids, lengths=lengths,
                            truncated=np.array([e.truncated for e in encoded], dtype=bool))
