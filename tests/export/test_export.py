"""Export correctness: named dims, ORT parity, batch invariance, padding and length robustness
for every cell x direction x pooling (18 combinations, layers cycling 1-3) and the shipped
default configuration."""
from __future__ import annotations

import dataclasses
import itertools
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
from training.model import CELLS, POOLINGS, ModelConfig, RecurrentClassifier
from training.train import TrainConfig
from tests.support.tiny_models import make_tiny_checkpoint

VOCAB = 60


def matrix() -> list[tuple[str, bool, int, str, int]]:
    """cell x direction x pooling = 18 cases; layers cycle 1-3 so that every pooling meets every
    layer count; every third case uses a non-zero padding id (the embedding's padding_idx)."""
    cases = []
    for block, (cell, bidirectional) in enumerate(itertools.product(sorted(CELLS), (False, True))):
        for index, pooling in enumerate(POOLINGS):
            layers = (index + block) % 3 + 1
            pad_id = 7 if (block + index) % 3 == 2 else 0
            cases.append((cell, bidirectional, layers, pooling, pad_id))
    return cases


CASES = matrix()


def padded(lengths: list[int], seed: int, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (len(lengths), max(lengths))).astype(np.int64)
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids, np.array(lengths, dtype=np.int64)


def run(session: ort.InferenceSession, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return session.run(None, {"input_ids": ids, "lengths": lengths})[0]


def check_exported(model: RecurrentClassifier, path: Path, batches: list[list[int]], vocab: int) -> None:
    """The exported file against the eager model: named dims, one recurrent node of the right
    cell, logits, batch invariance, garbage in the padding, lengths 0 and > seq."""
    onnx_model = check_onnx(path)
    assert input_dims(onnx_model) == {"input_ids": [BATCH_DIM, SEQ_DIM], "lengths": [BATCH_DIM]}
    recurrent = [t for t in op_histogram(onnx_model) if t in {"RNN", "GRU", "LSTM"}]
    assert [t.lower() for t in recurrent] == [model.config.cell]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, lengths in enumerate(batches):
        ids, lens = padded(lengths, seed, vocab)
        got = run(session, ids, lens)
        with torch.no_grad():
            want = model(torch.from_numpy(ids), torch.from_numpy(lens)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        alone = np.concatenate([run(session, ids[i : i + 1, : lens[i]], lens[i : i + 1]) for i in range(len(lengths))])
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)
        # the graph must not read padding: any ids there (the pad id, [UNK], real words) give the same logits
        garbage = ids.copy()
        noise = np.random.default_rng(seed + 100).integers(0, vocab, ids.shape)
        past = np.arange(ids.shape[1])[None, :] >= lens[:, None]
        garbage[past] = noise[past]
        assert (garbage[past] != 0).any() or not past.any()
        np.testing.assert_allclose(run(session, garbage, lens), got, rtol=0, atol=1e-6)
    # lengths are clamped to [1, seq] inside the graph: 0 (and below) acts as 1, > seq as seq
    ids = np.repeat(padded([9], seed=42, vocab=vocab)[0], 4, axis=0)  # one text, four lengths
    out = run(session, ids, np.array([0, 1, 9, 10_000], dtype=np.int64))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[3], out[2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(run(session, ids[:1], np.array([-3], dtype=np.int64)), out[1:2], rtol=0, atol=1e-6)
    assert np.abs(out[1] - out[2]).max() > 1e-4  # lengths really matter: the clamp is not a constant


@pytest.mark.parametrize(("cell", "bidirectional", "layers", "pooling", "pad_id"), CASES)
def test_export_matches_pytorch_and_is_batch_invariant(tmp_path: Path, cell, bidirectional, layers, pooling, pad_id) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, num_labels=4, cell=cell, embedding_dim=8, hidden_size=6,
                         num_layers=layers, bidirectional=bidirectional, dropout=0.0, pooling=pooling, pad_id=pad_id)
    model = RecurrentClassifier(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    # batch sizes and lengths other than the trace sample (3 x 7), including 1 and a long text
    check_exported(model, path, [[1], [5, 1, 17, 2, 9], [40] + [3] * 10 + [1, 39]], VOCAB)


def test_matrix_covers_every_combination() -> None:
    assert len({(c, b, p) for c, b, _, p, _ in CASES}) == len(CELLS) * 2 * len(POOLINGS) == 18
    for pooling in POOLINGS:
        assert {layers for _, _, layers, p, _ in CASES if p == pooling} == {1, 2, 3}
    for cell, bidirectional in itertools.product(CELLS, (False, True)):
        assert {layers for c, b, layers, _, _ in CASES if (c, b) == (cell, bidirectional)} == {1, 2, 3}
    assert any(pad_id != 0 for *_, pad_id in CASES)


def shipped_configs() -> list[ModelConfig]:
    """The configuration `textclf train` ships by default (TrainConfig) and a bidirectional LSTM
    of the same size (the mission's model), deduplicated when the default already is one."""
    defaults = TrainConfig()
    default = ModelConfig(vocab_size=defaults.vocab_size, num_labels=5, cell=defaults.cell,  # type: ignore[arg-type]
                          embedding_dim=defaults.embedding_dim, hidden_size=defaults.hidden_size,
                          num_layers=defaults.num_layers, bidirectional=defaults.bidirectional,
                          dropout=defaults.dropout, pooling=defaults.pooling)  # type: ignore[arg-type]
    configs = [default, dataclasses.replace(default, cell="lstm", bidirectional=True)]
    return [c for i, c in enumerate(configs) if c not in configs[:i]]


@pytest.mark.parametrize("config", shipped_configs(), ids=lambda c: f"{c.cell}-{'bi' if c.bidirectional else 'uni'}"
                         f"-{c.num_layers}-{c.pooling}-{c.embedding_dim}x{c.hidden_size}")
def test_shipped_default_configuration_exports(tmp_path: Path, config: ModelConfig) -> None:
    """The default-size model (vocabulary, dims, max_len from TrainConfig) at full length."""
    torch.manual_seed(0)
    model = RecurrentClassifier(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    max_len = TrainConfig().max_len
    check_exported(model, path, [[max_len, 1, max_len // 2, 3]], config.vocab_size)


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
    texts, labels = load_test_split(checkpoint.manifest_path)
    report = run_parity(checkpoint, optimised, tmp_path / "tokenizer.json", providers=["CPUExecutionProvider"],
                        test_texts=texts, test_labels=labels)
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
    assert cpu["test_argmax_agreement"] >= 0.99 and cpu["accuracy_drop"] <= 0.01
    assert cpu["max_abs_prob_diff"] <= report["bounds"]["max_abs_prob"] == 0.5  # never unbounded
    assert cpu["accuracy_torch"] > 0.9  # the fitted model is decisive on its own test split
    assert cpu["max_abs_logit_diff"] > 0  # really quantised: not bit-identical to fp32
