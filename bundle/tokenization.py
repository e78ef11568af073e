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

Fast path: for the pipeline this project trains (training/tokenizer.py: NFKC, Lowercase,
BertPreTokenizer, WordLevel), an ASCII text's tokens are its lowercased runs of characters that are
neither ASCII whitespace (as Rust's ``char::is_whitespace``: tab, LF, VT, FF, CR, space) nor ASCII
punctuation (``char::is_ascii_punctuation``), and each punctuation mark alone; NFKC leaves ASCII as
it is. The same holds, with more whitespace and punctuation, for texts that also hold characters of
``FAST_PATH_BLOCKS`` (Latin-1, Latin Extended-A/B, Greek, Cyrillic, Armenian, Hebrew, Arabic,
Georgian, General Punctuation, currency signs) that NFKC leaves alone and that lowercase to one character without context (not capital
sigma): ``fast_path_characters`` checks each one against the bundle's own normalizer and
pre-tokenizer when the encoder is built ("é", "ж", "ש", "€" inside words; curly quotes, dashes, "«",
"،" as punctuation; U+2028 as whitespace). None of them is a combining mark or combines with its
neighbours under NFKC (tested for every pair), so a text of them is NFKC-normalized as a whole. The
characters of those blocks that NFKC replaces by one to three such characters, whatever surrounds
them (NBSP -> space, "…" -> "...", "µ" -> "μ", "½" -> "1⁄2"), are replaced first (``str.translate``).
``token_ids`` computes those in Python for small calls (at most ``FAST_PATH_MAX_CHARS`` characters:
what the server tokenizes on its event loop), 4-5x faster than a call into ``tokenizers`` for one
text, with the same ids (tests/training/test_tokenizer.py); any other text (CJK, emoji, ligatures
and fullwidth forms, combining marks such as Hebrew points or Arabic harakat), one holding an added token's content (``[PAD]``, ``[UNK]``), any other tokenizer
and larger calls (which ``tokenizers`` runs without the GIL) go to ``tokenizers``.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
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
# The fast path (module docstring): a call's texts are tokenized in Python up to this many
# characters in all; a larger call goes to tokenizers, which releases the GIL while it works.
FAST_PATH_MAX_CHARS = 4096
_ASCII_PUNCTUATION = r"!-/:-@\[-`{-~"  # the 32 marks of Rust's char::is_ascii_punctuation
_ASCII_WHITESPACE = r"\t\n\x0b\x0c\r "  # Rust's char::is_whitespace within ASCII
_ASCII_TOKENS = re.compile(rf"[{_ASCII_PUNCTUATION}]|[^{_ASCII_WHITESPACE}{_ASCII_PUNCTUATION}]+")
# Blocks beyond ASCII whose characters the fast path may take, each character checked against the
# bundle's own normalizer and pre-tokenizer (``fast_path_characters``): Latin-1 Supplement, Latin
# Extended-A and -B; Greek and Coptic, Cyrillic and its Supplement, Armenian, Hebrew, Arabic;
# Georgian; General Punctuation (curly quotes, dashes), Currency Symbols. (Scripts written without
# spaces, or whose words need combining marks, as Devanagari's virama, would gain nothing.)
FAST_PATH_BLOCKS = ((0x80, 0x250), (0x370, 0x700), (0x10A0, 0x1100), (0x2000, 0x2070), (0x20A0, 0x20D0))
# Python's str.lower() maps capital sigma by what surrounds it (final sigma); tokenizers' Lowercase
# maps character by character
_CONTEXT_LOWERED = "\u03a3"
_TRAINED_PIPELINE = {
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
}


@dataclass(frozen=True)
class FastPathCharacters:
    """The characters beyond ASCII the fast path takes, by what the pre-tokenizer does with their
    lowercase (which is what each of these strings holds), and those it replaces first."""

    word: str  # kept inside a word ("é", "ж", "£", "€")
    punctuation: str  # a token of its own ("\u2019", "\u2014", "«")
    whitespace: str  # separates words and is dropped (U+0085, U+2028)
    taken: str  # the characters themselves, before lowercasing
    # characters NFKC replaces by one to three ASCII or taken ones, whatever surrounds them: NBSP ->
    # space, "…" -> "...", "µ" -> "μ", "ª" -> "a"
    replaced: dict[str, str] = field(default_factory=dict)

    def token_pattern(self) -> re.Pattern[str]:
        """Tokens of a lowercased text made of ASCII and these characters: each punctuation mark
        alone, and runs of everything that is neither punctuation nor whitespace."""
        punctuation = _ASCII_PUNCTUATION + re.escape(self.punctuation)
        return re.compile(rf"[{punctuation}]|[^{_ASCII_WHITESPACE}{re.escape(self.whitespace)}{punctuation}]+")


def _unassigned_or_combining(char: str) -> bool:
    """Never on the fast path: unassigned, surrogate or private-use, or a combining mark (NFKC
    reorders and composes those with their neighbours)."""
    return unicodedata.category(char) in ("Cn", "Cs", "Co") or unicodedata.combining(char) != 0


def _pre_tokenizer_class(tokenizer: Tokenizer, char: str) -> str | None:
    """"word", "punctuation" or "whitespace": what ``tokenizer`` does with ``char`` (its
    normalizer and pre-tokenizer, between two letters), or None when the fast path cannot
    reproduce it (NFKC changes it, it is a combining mark, it lowercases to several characters or
    by context)."""
    lowered = char.lower()
    if (len(lowered) != 1 or char in _CONTEXT_LOWERED or _unassigned_or_combining(char)
            or not unicodedata.is_normalized("NFKC", char)
            or tokenizer.normalizer.normalize_str(f"a{char}b") != f"a{lowered}b"):
        return None
    probe = f"a{lowered}b"
    pieces = [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(probe)]
    if pieces == [probe]:
        return "word"
    if pieces == ["a", lowered, "b"]:
        return "punctuation"
    if pieces == ["a", "b"]:
        return "whitespace"
    return None


_CHARACTERS_BY_PIPELINE: dict[str, FastPathCharacters] = {}


def _nfkc_replacement(tokenizer: Tokenizer, char: str, allowed: set[str]) -> str | None:
    """What NFKC makes of ``char`` when that is one to three characters of ``allowed`` (ASCII and the
    taken ones) and ``tokenizer``'s normalizer agrees between two letters; else None (also for a
    character NFKC leaves alone or a combining mark)."""
    if _unassigned_or_combining(char):
        return None
    replacement = unicodedata.normalize("NFKC", char)
    if replacement == char or not 1 <= len(replacement) <= 3 or not set(replacement) <= allowed:
        return None
    if tokenizer.normalizer.normalize_str(f"a{char}b") != f"a{replacement.lower()}b":
        return None
    return replacement


def fast_path_characters(tokenizer: Tokenizer, config: dict | None = None) -> FastPathCharacters:
    """The characters of ``FAST_PATH_BLOCKS`` the fast path takes for ``tokenizer`` (``config``: its
    parsed JSON, when the caller has it), each checked against its own normalizer and pre-tokenizer
    (~1,400 characters, ~10 ms: computed once per pipeline)."""
    config = config if config is not None else json.loads(tokenizer.to_str())
    key = json.dumps([config.get("normalizer"), config.get("pre_tokenizer")], sort_keys=True)
    if key not in _CHARACTERS_BY_PIPELINE:
        classes: dict[str, list[str]] = {"word": [], "punctuation": [], "whitespace": []}
        taken = []
        for start, end in FAST_PATH_BLOCKS:
            for code in range(start, end):
                char = chr(code)
                kind = _pre_tokenizer_class(tokenizer, char)
                if kind is not None:
                    classes[kind].append(char.lower())
                    taken.append(char)
        allowed = {chr(code) for code in range(0x80)} | set(taken)
        replaced = {}
        for start, end in FAST_PATH_BLOCKS:
            for code in range(start, end):
                replacement = _nfkc_replacement(tokenizer, chr(code), allowed)
                if replacement is not None:
                    replaced[chr(code)] = replacement
        _CHARACTERS_BY_PIPELINE[key] = FastPathCharacters(
            *("".join(dict.fromkeys(classes[kind])) for kind in ("word", "punctuation", "whitespace")),
            taken="".join(taken), replaced=replaced)
    return _CHARACTERS_BY_PIPELINE[key]


def fast_path_vocab(config: dict) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """(vocabulary, added tokens' contents) when ``config`` (a tokenizer's parsed JSON) is the
    pipeline the fast path reproduces (training/tokenizer.py's, unk = [UNK]), else None."""
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
        config = json.loads(tokenizer.to_str())
        fast_path = fast_path_vocab(config)
        self._fast_path_vocab, added_tokens = fast_path if fast_path is not None else (None, ())
        # lowercased: on the fast path's texts lowercasing maps character to character, so an added
        # token's content is in a text exactly when its lowercase is in the text's lowercase
        self._added_tokens_lowered = tuple(token.lower() for token in added_tokens)
        characters = fast_path_characters(tokenizer, config) if fast_path else FastPathCharacters("", "", "", "")
        self._tokens = characters.token_pattern()
        replaced = "".join(characters.replaced)
        # a non-ASCII text takes the fast path when this finds nothing in it
        self._outside_fast_path = re.compile(f"[^\\x00-\\x7f{re.escape(characters.taken + replaced)}]")
        self._replaced = re.compile(f"[{re.escape(replaced)}]") if replaced else None
        self._replacements = str.maketrans(characters.replaced)

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
    def has_fast_path(self) -> bool:
        return self._fast_path_vocab is not None

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated ids per text (no special tokens added), the whole text: unbounded work,
        so ``encode`` calls it with bounded prefixes only. Texts of a small call take the fast
        path where it applies (module docstring), the others ``tokenizers``."""
        vocab = self._fast_path_vocab
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
        """``text``'s tokens by the fast path, or None where it does not apply (module docstring)."""
        pattern = self._fast_path_pattern(text)
        if pattern is None:
            return None
        lowered = text.lower()
        if pattern is not _ASCII_TOKENS and self._replaced is not None and self._replaced.search(text):
            if any(token in lowered for token in self._added_tokens_lowered):  # as written, before NFKC
                return None
            lowered = text.translate(self._replacements).lower()  # NFKC of these characters, then lowercase
        if any(token in lowered for token in self._added_tokens_lowered):
            return None
        return pattern.findall(lowered)

    def _fast_path_pattern(self, text: str) -> re.Pattern[str] | None:
        """The token pattern for ``text`` when all its characters are the fast path's, else None."""
        if self._fast_path_vocab is None:
            return None
        if text.isascii():
            return _ASCII_TOKENS  # ASCII classes only: ~15 % faster on long texts than the full ones
        return self._tokens if self._outside_fast_path.search(text) is None else None

    def _tokenizers_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode_batch_fast`` gives the same ids as ``encode_batch`` without computing character
        offsets (unused here): ~20 % less time per text, and like ``encode_batch`` it releases the GIL."""
        return [enc.ids for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Ragged ids per text, at most ``max_len`` each, with bounded work (module docstring).

        Rounds: every unfinished text is cut to at most ``limit`` characters, at its last ASCII
        whitespace, or at ``limit`` itself when it has none there, and the prefixes are tokenized
        together. In a call the fast path takes (at most ``FAST_PATH_MAX_CHARS`` characters), a text
        within the budget made of the fast path's characters starts with its whole length as the
        limit: one round, in Python, at most three tokens per character (what NFKC makes of "…"),
        bounded by the call's size. Any other text starts with ``max_len + 1``, the fewest
        characters that can hold more than ``max_len`` tokens, so a text NFKC expands, or one of a
        large call, costs O(``max_len``) whatever it holds. A text is finished when it was not cut,
        when its whitespace-cut prefix holds more than ``max_len`` tokens, when its hard-cut prefix
        holds more than ``max_len + HARD_CUT_SLACK`` (only the tokens at a hard cut can differ from
        the full text's), or in the last round (``limit == char_budget``); otherwise the next
        round's limit is extrapolated from the prefix's characters per token (at least doubling)."""
        results: list[EncodedText | None] = [None] * len(texts)
        budget, first = self.char_budget, min(self.char_budget, self.max_len + 1)
        small_call = sum(len(text) for text in texts) <= FAST_PATH_MAX_CHARS
        limits = {i: len(text) if small_call and len(text) <= budget and self._fast_path_pattern(text) else first
                  for i, text in enumerate(texts)}
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
