"""bench/train_cells.py: the validation-only decision rule and the --variants parser."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from train_cells import decide, split_variants  # noqa: E402


def row(seeds: int, mean: float, spread: float, cpu: float, se: float = 0.005) -> dict:
    return {"seeds": list(range(13, 13 + seeds)), "val_accuracy_mean": mean, "val_accuracy_range": spread,
            "val_accuracy_se": se, "cpu_seconds_mean": cpu}


def test_split_variants_keeps_each_variants_own_overrides() -> None:
    assert split_variants("lstm-bi,lstm-bi:max_len=256,pooling=max,gru-uni:hidden_size=32") == [
        "lstm-bi", "lstm-bi:max_len=256,pooling=max", "gru-uni:hidden_size=32"]


def test_cheapest_lstm_within_one_standard_error_of_the_best_is_chosen() -> None:
    table = {
        "lstm-bi": row(3, 0.970, 0.010, 500.0),  # standard error 0.005
        "lstm-bi:max_len=256": row(3, 0.966, 0.010, 130.0),  # 0.004 below the best: within one SE
        "lstm-bi:max_len=128": row(3, 0.940, 0.005, 60.0),  # cheaper still, but clearly worse
        "lstm-bi:hidden_size=32": row(1, 0.990, 0.0, 10.0),  # one lucky seed decides nothing
    }
    choice, reason = decide(table)
    assert choice == "lstm-bi:max_len=256", reason


def test_a_better_variant_by_more_than_one_standard_error_wins_over_a_cheaper_one() -> None:
    # 0.008 apart: inside the seeds' max-min range (0.02) but outside the best's standard error (0.0065)
    table = {"lstm-bi": row(3, 0.984, 0.020, 374.0, se=0.0065), "lstm-bi:max_len=256": row(3, 0.976, 0.0, 131.0, se=0.0)}
    assert decide(table)[0] == "lstm-bi"


@pytest.mark.parametrize(("gru_mean", "expected"), [(0.975, "lstm-bi"), (0.990, "gru-bi")])
def test_another_cell_must_beat_the_lstm_by_more_than_the_spread(gru_mean: float, expected: str) -> None:
    table = {"lstm-bi": row(3, 0.970, 0.010, 500.0), "gru-bi": row(3, gru_mean, 0.010, 400.0)}
    assert decide(table)[0] == expected
