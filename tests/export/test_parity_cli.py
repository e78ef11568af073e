"""`textclf parity` exit codes: 0 on a good bundle (report written), non-zero when only parity can tell."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bundle.card import CARD_FILE, GOLDEN_FILE, MODEL_FILE, TOKENIZER_FILE, ModelCard
from bundle.store import sha256_file, verify_bundle, write_card
from export.cli import main as export_main
from export.parity_cli import main as parity_main
from tests.support.tiny_models import make_tiny_bundle, make_tiny_checkpoint


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("p") / "models", name="tiny", cell="lstm", num_layers=2)


def copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (MODEL_FILE, TOKENIZER_FILE, CARD_FILE, GOLDEN_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_parity_cli_passes_and_writes_report(bundle: Path, tmp_path: Path, capsys) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    card = ModelCard.load(copy / CARD_FILE)
    card.parity = None
    write_card(copy, card)
    assert parity_main([str(copy), "--providers", "CPUExecutionProvider", "--seed", "3"]) == 0
    assert "PASSED" in capsys.readouterr().out
    report = verify_bundle(copy).parity
    assert report["passed"] is True and report["seed"] == 3 and report["num_test_texts"] > 0
    assert report["failures"] == report["waivers"] == []
    cpu = report["providers"]["CPUExecutionProvider"]
    assert cpu["session_providers"] == ["CPUExecutionProvider"]
    assert cpu["max_abs_logit_diff"] <= 1e-4 and cpu["argmax_agreement"] == 1.0
    assert {"empty", "exactly_max_len", "far_beyond_max_len", "cjk", "emoji", "control_chars"} <= set(
        cpu["edge_cases_max_abs_logit_diff"])


def test_parity_cli_fails_on_perturbed_weights_with_valid_sha(bundle: Path, tmp_path: Path, capsys) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    model = onnx.load(str(copy / MODEL_FILE))
    # perturb the largest recurrent weight tensor (an LSTM initializer), keep everything else valid
    target = max((init for init in model.graph.initializer if init.dims and len(init.dims) == 3),
                 key=lambda init: int(np.prod(init.dims)))
    values = numpy_helper.to_array(target).copy()
    values += np.float32(0.05)
    target.CopyFrom(numpy_helper.from_array(values, target.name))
    onnx.save(model, str(copy / MODEL_FILE))
    card = ModelCard.load(copy / CARD_FILE)
    card.sha256[MODEL_FILE] = sha256_file(copy / MODEL_FILE)
    write_card(copy, card)
    verify_bundle(copy)  # sha256 and the old report still look fine: only parity can tell
    assert parity_main([str(copy), "--providers", "CPUExecutionProvider"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "max |Δlogit|" in captured.out
    assert ModelCard.load(copy / CARD_FILE).parity["passed"] is False


def test_parity_cli_usage_errors(tmp_path: Path, capsys) -> None:
    assert parity_main([str(tmp_path / "nope")]) == 2
    assert "missing" in capsys.readouterr().err


def test_export_cli_publishes_next_version(tmp_path: Path, capsys) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", cell="rnn", bidirectional=True, pooling="mean")
    args = [str(checkpoint), "--repository", str(tmp_path / "models"), "--name", "news",
            "--providers", "CPUExecutionProvider"]
    assert export_main(args) == 0
    assert export_main(args) == 0
    assert (tmp_path / "models" / "news" / "2" / MODEL_FILE).is_file()
    assert verify_bundle(tmp_path / "models" / "news" / "2").parity_passed
    assert export_main(args + ["--name", "Bad Name"]) == 2


def test_parity_cli_fails_when_the_card_disagrees_with_the_checkpoint(bundle: Path, tmp_path: Path, capsys) -> None:
    """The service reads labels and max_len from model.json: they must be the checkpoint's."""
    copy = copy_bundle(bundle, tmp_path / "b")
    card = ModelCard.load(copy / CARD_FILE)
    card.labels = list(reversed(card.labels))
    card.answers_sha256 = card.answers_digest()  # re-sealed: verification passes, only the checkpoint can tell
    write_card(copy, card)
    assert parity_main([str(copy), "--providers", "CPUExecutionProvider", "--no-write"]) == 1
    assert "bundle labels" in capsys.readouterr().out


def test_export_refuses_a_checkpoint_without_test_split_unless_told(tmp_path: Path, capsys) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", cell="gru", bidirectional=False, with_split=False)
    args = [str(checkpoint), "--repository", str(tmp_path / "models"), "--name", "nosplit",
            "--providers", "CPUExecutionProvider"]
    assert export_main(args) == 2
    assert "no test split" in capsys.readouterr().err and not (tmp_path / "models" / "nosplit").exists()
    assert export_main(args + ["--allow-no-test-split"]) == 0
    report = verify_bundle(tmp_path / "models" / "nosplit" / "1").parity
    assert report["passed"] and report["num_test_texts"] == 0
    assert report["waivers"] and "allowed explicitly" in report["waivers"][0]
    assert "WAIVED" in capsys.readouterr().out
    # re-running parity on it needs the same explicit permission
    bundle_dir = str(tmp_path / "models" / "nosplit" / "1")
    assert parity_main([bundle_dir, "--providers", "CPUExecutionProvider", "--no-write"]) == 1
    assert parity_main([bundle_dir, "--providers", "CPUExecutionProvider", "--no-write", "--allow-no-test-split"]) == 0
