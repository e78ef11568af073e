"""End-to-end training through the CLI on tiny data: files, resume, reproducibility, errors."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.cli import main
from training.data import DataError
from training.train import EarlyStopState, evaluate_on_test, wilson_interval

TOPICS = {
    "sport": "goal match team player score league coach win",
    "tech": "software chip phone computer internet data code app",
    "money": "bank market shares profit economy price trade tax",
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    rows = []
    for label, words in TOPICS.items():
        vocab = words.split() + ["the", "a", "today", "said"]
        for _ in range(16):
            rows.append({"text": " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 20))), "label": label})
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(data: Path, run_dir: Path, *extra: str) -> int:
    return main([
        "--data", str(data), "--run-dir", str(run_dir), "--embedding-dim", "8", "--hidden-size", "8",
        "--max-len", "12", "--batch-size", "8", "--threads", "1", "--no-progress", "--seed", "5", *extra,
    ])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_two_epoch_run_produces_checkpoints_metrics_and_plots(data_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run(data_file, run_dir, "--epochs", "2", "--cell", "lstm") == 0
    for name in ("best.pt", "last.pt"):
        raw = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert raw["format"] == "textclf-checkpoint/1"
        assert raw["labels"] == ["money", "sport", "tech"]
        assert raw["model_config"]["cell"] == "lstm"
    assert torch.load(run_dir / "last.pt", weights_only=True)["resume"]["epoch"] == 2
    loaded = load_checkpoint(run_dir / "best.pt")
    assert loaded.max_len == 12 and loaded.manifest_path == str(run_dir / "split" / "manifest.json")
    batch = loaded.encoder.encode_batch(["goal match team", ""])
    logits = loaded.model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.lengths))
    assert logits.shape == (2, 3)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    assert set(metrics["per_class"]) == {"money", "sport", "tech"}
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["num_examples"] == 6
    assert metrics["test_truncated"] >= 0 and metrics["train_seconds"] > 0
    assert loaded.metrics["accuracy"] == metrics["accuracy"]  # best.pt carries the test report
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "tokenizer.json").is_file()


def test_same_seed_same_weights_and_resume_continues(data_file: Path, tmp_path: Path) -> None:
    straight, again, resumed = tmp_path / "straight", tmp_path / "again", tmp_path / "resumed"
    assert run(data_file, straight, "--epochs", "3", "--patience", "9") == 0
    assert run(data_file, again, "--epochs", "3", "--patience", "9") == 0
    for key, tensor in weights(straight / "last.pt").items():
        assert torch.equal(tensor, weights(again / "last.pt")[key]), key

    assert run(data_file, resumed, "--epochs", "1", "--patience", "9") == 0
    assert torch.load(resumed / "last.pt", weights_only=True)["resume"]["epoch"] == 1
    assert run(data_file, resumed, "--epochs", "3", "--resume", "--cell", "rnn") == 0  # --cell is ignored on resume
    state = torch.load(resumed / "last.pt", weights_only=True)["resume"]
    assert state["epoch"] == 3 and [h["epoch"] for h in state["early_stop"]["history"]] == [1, 2, 3]
    # the early-stop state round-trips through last.pt as a dataclass
    assert EarlyStopState.from_dict(state["early_stop"]).to_dict() == state["early_stop"]
    # resuming after epoch 1 ends exactly where the uninterrupted run ended
    for key, tensor in weights(straight / "last.pt").items():
        torch.testing.assert_close(weights(resumed / "last.pt")[key], tensor, rtol=0, atol=0)

    # a later --resume without --epochs keeps the run's own budget (3): nothing left to train
    assert main(["--run-dir", str(resumed), "--resume", "--no-progress"]) == 0
    assert torch.load(resumed / "last.pt", weights_only=True)["resume"]["epoch"] == 3

    other = tmp_path / "other"
    assert main(["--data", str(data_file), "--run-dir", str(other), "--embedding-dim", "8", "--hidden-size", "8",
                 "--max-len", "12", "--batch-size", "8", "--threads", "1", "--no-progress", "--seed", "6",
                 "--epochs", "1"]) == 0
    assert not torch.equal(weights(other / "last.pt")["embedding.weight"], weights(straight / "last.pt")["embedding.weight"])


def test_bad_data_exits_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("1,title,desc\n2,title two\n", encoding="utf-8")
    assert main(["--data", str(bad), "--labels", "x,y", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: expected 3 columns" in err
    assert "Traceback" not in err


def test_resume_without_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--run-dir", str(tmp_path / "nothing"), "--resume", "--no-progress"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_training_never_reads_the_test_split_only_evaluate_on_test_does(data_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run(data_file, run_dir, "--epochs", "1", "--no-test") == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "val" and "accuracy" not in metrics and metrics["val"]["num_examples"] == 6
    assert metrics["data"]["near_duplicates_removed"] == 0 and metrics["data"]["near_duplicates"]["threshold"] == 0.8
    # make the test split unreadable (sha256 mismatch): training goes on without noticing ...
    test_file = run_dir / "split" / "test.jsonl"
    original = test_file.read_bytes()
    test_file.write_bytes(original + b'{"text": "x", "label": "tech"}\n')
    assert run(data_file, run_dir, "--epochs", "2", "--resume", "--no-test") == 0
    # ... and the one reader of the test split refuses it
    with pytest.raises(DataError, match="sha256"):
        evaluate_on_test(run_dir)
    test_file.write_bytes(original)
    report = evaluate_on_test(run_dir)
    assert report["split"] == "test" and report["num_examples"] == 6
    low, high = report["accuracy_ci95"]
    assert 0.0 <= low <= report["accuracy"] <= high <= 1.0
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] == report["accuracy"]
    assert load_checkpoint(run_dir / "best.pt").metrics["split"] == "test"


def test_wilson_interval() -> None:
    low, high = wilson_interval(200, 206)
    assert round(low, 3) == 0.938 and round(high, 3) == 0.987  # 200/206 worked by hand from the Wilson formula
    assert wilson_interval(0, 0) == [0.0, 1.0] and wilson_interval(5, 5)[1] == 1.0
