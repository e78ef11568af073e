"""Export correctness: named dims, ORT parity and batch invariance for every cell x direction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import BATCH_DIM, SEQ_DIM, check_onnx, export_onnx, input_dims
from export.optimize import op_histogram, optimize_onnx, quantize_int8
from export.parity import load_test_split, run_parity
from training.checkpoint import load_checkpoint
from training.model import ModelConfig, RecurrentClassifier
from tests.support.tiny_models import make_tiny_checkpoint

VOCAB = 60

# Every cell x direction; layers 1..3 and each pooling each appear in several cases.
CASES = [
    ("rnn", False, 1, "last"),
    ("rnn", True, 2, "mean"),
    ("gru", False, 3, "max"),
    ("gru", True, 1, "last"),
    ("lstm", False, 2, "last"),
    ("lstm", True, 3, "mean"),
    ("lstm", True, 1, "max"),
]


def padded(lengths: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, (len(lengths), max(lengths))).astype(np.int64)
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids, np.array(lengths, dtype=np.int64)


@pytest.mark.parametrize(("cell", "bidirectional", "layers", "pooling"), CASES)
def test_export_matches_pytorch_and_is_batch_invariant(tmp_path: Path, cell, bidirectional, layers, pooling) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, num_labels=4, cell=cell, embedding_dim=8, hidden_size=6,
                         num_layers=layers, bidirectional=bidirectional, dropout=0.0, pooling=pooling)
    model = RecurrentClassifier(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    onnx_model = check_onnx(path)
    assert input_dims(onnx_model) == {"input_ids": [BATCH_DIM, SEQ_DIM], "lengths": [BATCH_DIM]}
    assert {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}[
        next(t for t in op_histogram(onnx_model) if t in {"RNN", "GRU", "LSTM"})] == cell
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    # batch sizes and lengths other than the trace sample (3 x 7), including 1 and a long text
    for lengths, seed in (([1], 1), ([5, 1, 17, 2, 9], 2), ([40] + [3] * 10 + [1, 39], 3)):
        ids, lens = padded(lengths, seed)
        got = session.run(None, {"input_ids": ids, "lengths": lens})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(ids), torch.from_numpy(lens)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        alone = np.concatenate([
            session.run(None, {"input_ids": ids[i : i + 1, : lens[i]], "lengths": lens[i : i + 1]})[0]
            for i in range(len(lengths))
        ])
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)


def test_second_export_in_same_process_keeps_dynamic_seq(tmp_path: Path) -> None:
    """Pitfall 1: a second export must not freeze seq (dims named, other lengths accepted)."""
    torch.manual_seed(1)
    for index in range(2):
        config = ModelConfig(vocab_size=VOCAB, num_labels=3, cell="lstm", embedding_dim=8, hidden_size=4)
        path = export_onnx(RecurrentClassifier(config).eval(), tmp_path / f"m{index}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ids, lens = padded([11, 2], seed=index)
        assert session.run(None, {"input_ids": ids, "lengths": lens})[0].shape == (2, 3)


@pytest.fixture(scope="module")
def lstm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), cell="lstm", bidirectional=True)


def test_optimised_model_keeps_contract_and_parity(tmp_path: Path, lstm_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(lstm_checkpoint)
    raw = export_onnx(checkpoint.model, tmp_path / "raw.onnx")
    optimised = optimize_onnx(raw, tmp_path / "opt.onnx", level="extended")
    (tmp_path / "tokenizer.json").write_text(checkpoint.raw["tokenizer_json"], encoding="utf-8")
    report = run_parity(checkpoint, optimised, tmp_path / "tokenizer.json", providers=["CPUExecutionProvider"])
    assert report["passed"], report
    cpu = report["providers"]["CPUExecutionProvider"]
    assert cpu["max_abs_logit_diff"] <= 1e-4 and cpu["batch_invariance_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_quantises_and_passes_its_bounds(tmp_path: Path, cell: str) -> None:
    # a few fitting steps give the logits real margins (random logits are near-ties)
    checkpoint = load_checkpoint(
        make_tiny_checkpoint(tmp_path, cell=cell, bidirectional=True, hidden_size=16, fit_steps=30))
    raw = export_onnx(checkpoint.model, tmp_path / "raw.onnx")
    histogram = quantize_int8(raw, tmp_path / "int8.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "int8.onnx")))
    assert "MatMulInteger" in histogram or "DynamicQuantizeMatMul" in histogram
    if cell == "lstm":
        assert "DynamicQuantizeLSTM" in histogram and "LSTM" not in histogram
    else:  # onnxruntime has no integer GRU/RNN kernel: the recurrence stays float
        assert "GRU" in histogram
    (tmp_path / "tokenizer.json").write_text(checkpoint.raw["tokenizer_json"], encoding="utf-8")
    texts, labels = load_test_split(checkpoint.manifest_path)
    report = run_parity(checkpoint, tmp_path / "int8.onnx", tmp_path / "tokenizer.json", quantization="int8",
                        test_texts=texts, test_labels=labels, providers=["CPUExecutionProvider"])
    cpu = report["providers"]["CPUExecutionProvider"]
    assert report["passed"], cpu["failures"]
    assert cpu["argmax_agreement"] >= 0.99 and cpu["accuracy_drop"] <= 0.01
    assert cpu["accuracy_torch"] > 0.9  # the fitted model is decisive on its own test split
    assert cpu["max_abs_logit_diff"] > 0  # really quantised: not bit-identical to fp32
