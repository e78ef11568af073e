"""Train the word-level tokenizer on the training split only."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from bundle.tokenization import SPECIAL_TOKENS, UNK_TOKEN


def train_tokenizer(texts: Iterable[str], vocab_size: int = 20000, min_frequency: int = 2) -> Tokenizer:
    """Word-level vocabulary with language-neutral normalisation.

    NFKC folds compatibility forms in any script, Lowercase folds case, and the BERT
    pre-tokenizer splits on whitespace and punctuation (and isolates CJK characters' punctuation).
    Ids 0 and 1 are [PAD] and [UNK].
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
