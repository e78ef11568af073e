"""RecurrentClassifier: shapes for every configuration and padding invariance."""
from __future__ import annotations

import itertools

import pytest
import torch

from training.model import CELLS, POOLINGS, ModelConfig, RecurrentClassifier

VOCAB, LABELS = 50, 4


def tiny(cell: str, bidirectional: bool, layers: int, pooling: str) -> RecurrentClassifier:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, num_labels=LABELS, cell=cell, embedding_dim=6, hidden_size=5,
                         num_layers=layers, bidirectional=bidirectional, dropout=0.1, pooling=pooling)
    return RecurrentClassifier(config).eval()


def padded_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(2, VOCAB, (length,), generator=generator)
    return ids, torch.tensor(lengths, dtype=torch.int64)


ALL_CONFIGS = list(itertools.product(sorted(CELLS), [False, True], [1, 2, 3], POOLINGS))


@pytest.mark.parametrize(("cell", "bidirectional", "layers", "pooling"), ALL_CONFIGS)
def test_shapes(cell: str, bidirectional: bool, layers: int, pooling: str) -> None:
    model = tiny(cell, bidirectional, layers, pooling)
    ids, lengths = padded_batch([7, 1, 3])
    directions = 2 if bidirectional else 1
    with torch.no_grad():
        outputs, final_hidden = model.encode(model.embedding(ids), lengths)
        logits = model(ids, lengths)
    assert outputs.shape == (3, 7, directions * 5)
    assert final_hidden.shape == (layers * directions, 3, 5)
    assert logits.shape == (3, LABELS) and logits.dtype == torch.float32
    # outputs are exactly zero past each length (pooling relies on it)
    assert torch.count_nonzero(outputs[1, 1:]) == 0 and torch.count_nonzero(outputs[2, 3:]) == 0
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("cell", "bidirectional", "layers", "pooling"),
                         [c for c in ALL_CONFIGS if c[2] in (1, 2)])
def test_padding_never_changes_a_result(cell: str, bidirectional: bool, layers: int, pooling: str) -> None:
    model = tiny(cell, bidirectional, layers, pooling)
    ids, lengths = padded_batch([5, 12, 1, 9, 3], seed=2)
    with torch.no_grad():
        batched = model(ids, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone = model(ids[row : row + 1, :length], lengths[row : row + 1])
            torch.testing.assert_close(batched[row : row + 1], alone, rtol=0, atol=1e-6)
            # extra trailing padding with arbitrary ids past the length is ignored as well
            noisy = torch.cat([ids[row : row + 1, :length], torch.full((1, 6), 7)], dim=1)
            torch.testing.assert_close(model(noisy, lengths[row : row + 1]), alone, rtol=0, atol=1e-6)


def test_config_round_trip_and_validation() -> None:
    config = ModelConfig(vocab_size=10, num_labels=3, cell="lstm", num_layers=2, pooling="mean")
    assert ModelConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(vocab_size=10, num_labels=3, cell="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(vocab_size=10, num_labels=3, pooling="sum")  # type: ignore[arg-type]
