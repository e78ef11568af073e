"""Tokenizer trained on texts: normalisation, any script, empty text, truncation."""
from __future__ import annotations

import numpy as np
import pytest

from bundle.tokenization import PAD_ID, UNK_ID, TextEncoder
from training.tokenizer import train_tokenizer

CORPUS = [
    "The market rallied today.",
    "the MARKET fell, again!",
    "Рынок вырос сегодня. рынок",
    "Η αγορά έπεσε. αγορά",
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
