"""Tokenizer trained on texts: normalisation, any script, empty text, truncation."""
from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bundle.tokenization import (FAST_PATH_BLOCKS, FAST_PATH_MAX_CHARS, PAD_ID, UNK_ID, TextEncoder,
                                 fast_path_characters, pad)
from training.tokenizer import train_tokenizer

CORPUS = [
    "The market rallied today.",
    "the MARKET fell, again!",
    "Рынок вырос сегодня. рынок",
    "Η αγορά έπεσε. αγορά",
    "ΟΔΟΣ",  # "οδοσ": tokenizers lowercase a final capital sigma without its context, str.lower() does not
    "השוק עלה היום. השוק",
    "السوق ارتفع اليوم، السوق",
    "市场 今天 上涨 市场",
    "goal 🎉 goal 🎉",
    "file file",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), max_len=4)


def test_special_ids(encoder: TextEncoder) -> None:
    assert encoder.tokenizer.token_to_id("[PAD]") == PAD_ID == 0
    assert encoder.tokenizer.token_to_id("[UNK]") == UNK_ID == 1


def test_normalisation_folds_case_width_and_ligatures(encoder: TextEncoder) -> None:
    ids = encoder.token_ids(["MARKET", "ＭＡＲＫＥＴ", "market", "\ufb01le"])  # fullwidth letters, "fi" ligature
    assert ids[0] == ids[1] == ids[2] != [UNK_ID]
    assert ids[3] == encoder.token_ids(["file"])[0] != [UNK_ID]
    # punctuation is split off, so "market," and "market" share the word id
    assert encoder.token_ids(["market,"])[0][0] == ids[0][0]


@pytest.mark.parametrize("text", ["РЫНОК", "αγορά", "市场", "🎉"])
def test_any_script_gets_known_ids(encoder: TextEncoder, text: str) -> None:
    ids = encoder.token_ids([text])[0]
    assert ids and UNK_ID not in ids


def test_unseen_words_map_to_unk(encoder: TextEncoder) -> None:
    assert encoder.token_ids(["zebra"])[0] == [UNK_ID]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_one_unk(encoder: TextEncoder, text: str) -> None:
    batch = encoder.encode_batch([text, "market"])
    assert batch.lengths.tolist() == [1, 1]
    assert batch.input_ids[0].tolist() == [UNK_ID]
    assert not batch.truncated.any()


def test_truncation_is_counted(encoder: TextEncoder) -> None:
    batch = encoder.encode_batch(["market " * 4, "market " * 5, "market", "market " * 40])
    assert batch.lengths.tolist() == [4, 4, 1, 4]
    assert batch.truncated.tolist() == [False, True, False, True]
    assert batch.num_truncated == 2
    assert batch.input_ids.shape == (4, 4)
    assert batch.input_ids.dtype == np.int64
    assert (batch.input_ids[2, 1:] == PAD_ID).all()


def test_ids_equal_the_offset_tracking_encoder(encoder: TextEncoder) -> None:
    texts = [*CORPUS, "", "  ", "MARKET\u00a0fell", "ﬁle ＦＩＬＥ", "market. " * 50, "a\x00b\u200bc"]
    slow = [e.ids for e in encoder.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert encoder.token_ids(texts) == slow


# -- the fast path (bundle/tokenization.py's docstring) ------------------------------------

def _tokenizers_ids(encoder: TextEncoder, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in encoder.tokenizer.encode_batch(texts, add_special_tokens=False)]


class TokenizersCalls(TextEncoder):
    """The real encoder, recording the texts it hands to ``tokenizers``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def _tokenizers_ids(self, texts):
        self.sent.extend(texts)
        return super()._tokenizers_ids(texts)


# every ASCII character (controls, DEL, every whitespace and punctuation mark), every character of
# the fast path's blocks (those NFKC changes, punctuation, NBSP, letters, signs, capital sigma, "İ"),
# combining marks, CJK, an emoji, known words in any case and script
_FAST_ALPHABET = ([chr(c) for c in range(0x80)] + [chr(c) for start, end in FAST_PATH_BLOCKS for c in range(start, end)]
                  + ["\u0301", "\u0306", "\u0308", "市", "🎉", "market", "MARKET", "Market", "file", "rallied", "today",
                     "again", "café", "CAFÉ", "£5m", "Рынок", "РЫНОК", "вырос", "αγορά", "ΑΓΟΡΆ", "ΑΣ", "ΟΔΟΣ", "й", "и", "השוק", "שָׁלוֹם", "السوق", "مُحَمَّد"])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(_FAST_ALPHABET), max_size=80))
@example(parts=["market", "_", "file", "\x1c", "today", "\x0b", "again", "\x7f", "`", "\x00"])
@example(parts=["E", "\u0301", " ", "CAFÉ", "\u00a0", "£5m", "\u00b5", "«", "\u00ad", "ß", "ª"])
@example(parts=["\u201c", "Рынок", "\u2019", "\u2014", "αγορά", "\u2028", "\x85", "€", "\u2026", "ΑΣ", " ", "и", "\u0306"])
@example(parts=["השוק", " ", "שָׁלוֹם", "،", "السوق", "؟", "مُحَمَّد", "ΟΔΟΣ", " ", "ა"])
def test_fast_path_gives_the_ids_of_tokenizers(encoder: TextEncoder, parts: list[str]) -> None:
    text = "".join(parts)
    counting = TokenizersCalls(encoder.tokenizer, max_len=4)
    assert counting.has_fast_path
    ids = counting.token_ids([text, "the market"])
    assert ids == _tokenizers_ids(encoder, [text, "the market"])
    characters = fast_path_characters(encoder.tokenizer)
    taken = set(characters.taken) | set(characters.replaced)
    if "[PAD]" not in text.upper() and "[UNK]" not in text.upper() and all(c.isascii() or c in taken for c in text):
        assert counting.sent == []  # computed in Python, not by tokenizers
    elif any(c in text for c in "\u0301\u0306\u0308\u03a3\u0130市🎉"):
        assert counting.sent == [text]  # a combining mark, lowercasing by context, outside the blocks: tokenizers


def test_fast_path_characters_are_those_the_tokenizer_treats_alike(encoder: TextEncoder) -> None:
    characters = fast_path_characters(encoder.tokenizer)
    assert {"£", "é", "ß", "ÿ", "©", "ł", "ж", "λ", "ά", "ա", "ש", "ب", "ა", "€"} <= set(characters.word)
    assert {"É", "Ł", "Ж", "Λ"} <= set(characters.taken) and not {"É", "Ж"} & set(characters.word)  # lowercased
    assert {"«", "»", "¿", "·", "\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014", "،", "؟", "։"} <= set(
        characters.punctuation)
    assert set(characters.whitespace) == {"\x85", "\u2028", "\u2029"}
    # NFKC changes them (NBSP -> space, µ -> μ, ª -> a, ½ -> 1⁄2, … -> ..., U+2002 -> space, U+0675 -> two
    # Arabic letters), they lowercase by context (capital sigma) or to two characters (İ), or they are
    # combining marks (Hebrew points, Arabic harakat)
    assert not set(characters.taken) & {"\u00a0", "µ", "ª", "½", "¨", "\u2026", "\u2002", "\u03a3", "\u0130", "\u0483",
                                        "\u05b8", "\u064e", "\u0675"}


def test_fast_path_characters_replaced_by_nfkc_are_replaced_whatever_surrounds_them(encoder: TextEncoder) -> None:
    characters = fast_path_characters(encoder.tokenizer)
    assert {"\u00a0": " ", "\u202f": " ", "\u2026": "...", "µ": "μ", "ª": "a", "½": "1\u20442", "ǆ": "dž"}.items() \
        <= characters.replaced.items()
    # NFKC leaves them alone (İ: lowercasing makes two characters), makes more than three characters of
    # them (U+2057: four primes), or they are combining marks: not replaced
    assert not {"\u0130", "\u2057", "\u0301", "\u05b8"} & set(characters.replaced)


def test_no_two_fast_path_characters_combine_under_nfkc(encoder: TextEncoder) -> None:
    """What lets the fast path skip NFKC on a whole text: every character it takes is NFKC-normalized
    alone (checked when the encoder is built) and next to any other (no combining mark, no
    composition), and NFKC makes of a replaced character what the fast path replaces it by whatever
    surrounds it, so NFKC of a text of them is the text with the replacements made."""
    characters = fast_path_characters(encoder.tokenizer)
    plain = [chr(c) for c in range(0x80)] + list(characters.taken)
    assert [a + b for a in plain for b in plain if not unicodedata.is_normalized("NFKC", a + b)] == []
    replaced = characters.replaced
    pairs = [(a, b) for a in replaced for b in plain + list(replaced)] + [(a, b) for a in plain for b in replaced]
    assert [a + b for a, b in pairs
            if unicodedata.normalize("NFKC", a + b) != replaced.get(a, a) + replaced.get(b, b)] == []


def test_texts_the_fast_path_does_not_reproduce_go_to_tokenizers(encoder: TextEncoder) -> None:
    counting = TokenizersCalls(encoder.tokenizer, max_len=4)
    texts = ["the market [UNK] fell", "[PAD]market", "[unk] rallied", "\ufb01le", "cafe\u0301", "ΑΣ",
             "market", "£5m café", "Рынок «вырос» — €5", "marché\u00a0: 7\u00a0412…"]
    assert counting.token_ids(texts) == _tokenizers_ids(encoder, texts)
    # added tokens' contents (either case), a ligature outside the blocks, a composition, capital sigma
    assert counting.sent == texts[:6]
    big = ["market " * (FAST_PATH_MAX_CHARS // 7 + 1)]  # a call over the fast path's size: tokenizers, without the GIL
    counting.sent.clear()
    assert counting.token_ids(big) == _tokenizers_ids(encoder, big) and counting.sent == big


@pytest.mark.parametrize("change", ["no-lowercase", "whitespace-split", "wordpiece"])
def test_other_tokenizer_pipelines_have_no_fast_path(encoder: TextEncoder, change: str) -> None:
    tokenizer = Tokenizer.from_str(encoder.tokenizer.to_str())
    if change == "no-lowercase":
        tokenizer.normalizer = normalizers.NFKC()
    elif change == "whitespace-split":
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tokenizer.model = models.WordPiece(encoder.tokenizer.get_vocab(), unk_token="[UNK]")
    other = TextEncoder(tokenizer, max_len=4)
    assert not other.has_fast_path
    texts = ["The MARKET fell, again!", "file_file"]
    assert other.token_ids(texts) == [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


# -- bounded work (docs/service.md "Bounded work per text") ----------------------------------

# Characters that exercise every boundary the cut must respect: NFKC expansion into several words
# (U+FDFA), ligatures, fullwidth and combining marks, compositions with punctuation ("=" + U+0338
# -> "≠"), final sigma, CJK (one token per character), punctuation, every ASCII whitespace.
_ALPHABET = ["market", "file", "a", "Σ", "σ", "ς", "\ufdfa", "\ufb01", "Ｍ", "\u0301", "=", "\u0338", "市", "场",
             ".", ",", "!", "-", " ", " ", " ", "\n", "\t", "\r", "\u00a0", "\u3000", "x", "🎉"]


class CountingEncoder(TextEncoder):
    """The real encoder, recording the characters it hands to the tokenizer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def token_ids(self, texts):
        self.calls.append(list(texts))
        return super().token_ids(texts)

    @property
    def chars(self) -> int:
        return sum(len(t) for call in self.calls for t in call)


@pytest.fixture(scope="module")
def tokenizer_json(encoder: TextEncoder) -> str:
    return encoder.tokenizer.to_str()


def _first_cut_holds_enough(text: str, encoder: TextEncoder) -> bool:
    """The docs' "fits in the budget": the text is within the budget, or its prefix up to the last
    ASCII whitespace within the budget holds more than max_len tokens."""
    if len(text) <= encoder.char_budget:
        return True
    cut = max(text.rfind(c, 0, encoder.char_budget + 1) for c in " \n\t\r")
    return cut > 0 and len(encoder.token_ids([text[:cut]])[0]) > encoder.max_len


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(_ALPHABET), max_size=120), max_len=st.integers(1, 12))
@example(words=[".", ".", "🎉", "=", "\u0338"] + [" ", "market"] * 10, max_len=3)  # a cut at 4 would split "🎉≠"
@example(words=["a"] * 7 + ["=", "\u0338", "x", "x"], max_len=1)  # a cut before U+0338 splits "a≠" in two
@example(words=["a", " ", "Σ", "Σ", "Σ", "Σ", "Σ", "Σ", "Σ", "a"], max_len=1)  # final sigma depends on what follows
def test_bounded_encoding_keeps_the_ids_of_texts_within_budget(tokenizer_json: str, words: list[str],
                                                               max_len: int) -> None:
    encoder = TextEncoder.from_json(tokenizer_json, max_len)
    text = "".join(words)
    [bounded] = encoder.encode([text])
    full = encoder.token_ids([text])[0]
    if _first_cut_holds_enough(text, encoder):
        assert bounded.ids.tolist() == (full[:max_len] or [UNK_ID])
        assert bounded.truncated == (len(full) > max_len)
    else:  # cut: a defined answer, always flagged
        assert bounded.truncated
        assert 1 <= bounded.length <= max_len


HOSTILE = {
    "a-space": "a " * 32768,
    "dots": "." * 65536,
    "nfkc-18x": "\ufdfa" * 21845,  # 3 UTF-8 bytes each, NFKC -> 18 characters and 4 words
    "no-space": "x" * 65536,
    "nfkc-no-token": "\u3300" * 21845,  # NFKC -> 4 characters of one word
    "space-then-word": "a " + "x" * 65534,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_texts_cost_a_bounded_number_of_characters(tokenizer_json: str, name: str) -> None:
    """64 KiB texts of the most expensive kinds: the tokenizer sees at most ~2x the budget per
    text, and the answer is a defined, truncated one."""
    max_len = 384
    encoder = CountingEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), max_len)
    text = HOSTILE[name]
    encoded = encoder.encode([text] * 64)
    assert encoder.chars <= 64 * 2 * encoder.char_budget, encoder.chars
    assert all(e.truncated and 1 <= e.length <= max_len for e in encoded)
    assert len({tuple(e.ids.tolist()) for e in encoded}) == 1


def test_short_texts_are_tokenized_once_in_full(tokenizer_json: str) -> None:
    encoder = CountingEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), 384)
    texts = ["The market rallied today.", "", "Рынок вырос сегодня. рынок"]
    encoded = encoder.encode(texts)
    assert encoder.calls == [texts]
    assert [e.ids.tolist() for e in encoded] == [ids or [UNK_ID] for ids in encoder.token_ids(texts)]


@pytest.mark.parametrize("text", [
    "The market rallied today, and the MARKET fell again! " * 9,  # 477 characters, 99 tokens
    "." * 512,  # the budget exactly, 512 tokens: the most a text within it can cost
])
def test_texts_within_the_budget_are_tokenized_whole_in_one_round(text: str) -> None:
    """Longer than ``max_len + 1`` characters but within ``char_budget``, on the fast path, alone in
    its call: one call with the whole text (no first round on a ``max_len + 1``-character prefix),
    the ids of tokenizing it in full."""
    encoder = CountingEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), 64)
    assert encoder.max_len + 1 < len(text) <= encoder.char_budget
    [encoded] = encoder.encode([text])
    assert encoder.calls == [[text]]
    full = encoder.token_ids([text])[0]
    assert encoded.ids.tolist() == full[:64] and encoded.truncated == (len(full) > 64)


@pytest.mark.parametrize("texts", [
    ["\ufdfa" * 500],  # within the budget, but NFKC makes 18 characters and 4 words of each
    ["The market rallied today, and the MARKET fell again! " * 9] * 64,  # 30,528 characters in all
], ids=["nfkc-expanding", "large-call"])
def test_texts_off_the_fast_path_start_from_a_short_prefix(texts: list[str]) -> None:
    """The whole-text round is only for small calls of the fast path's characters (at most one token
    a character, bounded by the call's size): a text NFKC expands, or any text of a large call,
    starts from ``max_len + 1`` characters, so its cost stays O(max_len) whatever it holds."""
    encoder = CountingEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), 64)
    assert all(len(text) <= encoder.char_budget for text in texts)
    encoder.encode(texts)
    assert max(len(piece) for piece in encoder.calls[0]) <= encoder.max_len + 1


def test_long_text_needs_at_most_two_rounds_when_words_are_ordinary() -> None:
    """A long legitimate text: the second round's prefix is extrapolated from the first's
    characters per token, so the tokenizer does not crawl up in small steps."""
    encoder = CountingEncoder(train_tokenizer(CORPUS, vocab_size=500, min_frequency=1), 64)
    text = "The market rallied today, and the MARKET fell again! " * 40
    [encoded] = encoder.encode([text])
    assert len(encoder.calls) == 2
    assert encoded.truncated and encoded.ids.tolist() == encoder.token_ids([text])[0][:64]


def test_pad_of_one_row_matches_the_general_padding() -> None:
    """``pad`` takes a shortcut for a batch of one (the lone-request path): same ids, same lengths,
    int64 and C-contiguous as onnxruntime needs, also for a non-int64 or non-contiguous row."""
    for row in (np.array([5, 3, 9], dtype=np.int64), np.array([1], dtype=np.int32), np.arange(10)[::2]):
        ids, lengths = pad([row])
        general_ids, general_lengths = pad([row, row])
        np.testing.assert_array_equal(ids, general_ids[:1])
        np.testing.assert_array_equal(lengths, general_lengths[:1])
        assert ids.dtype == np.int64 and lengths.dtype == np.int64 and ids.flags["C_CONTIGUOUS"]
