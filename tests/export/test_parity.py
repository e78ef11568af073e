"""The parity suite cannot pass vacuously: no test texts, a provider fallback, a |Δprob| beyond its
bound, a bundle that disagrees with its checkpoint, or edge cases that collapse into one [UNK]
input all fail (or, for missing test texts, pass only with an explicit, recorded waiver)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from bundle.tokenization import UNK_ID, TextEncoder
from export.onnx_export import export_onnx
from export.parity import (
    EDGE_CASES_EQUAL_BY_CONTRACT,
    VOCABULARY_EDGE_CASES,
    edge_case_problems,
    edge_case_texts,
    load_test_split,
    run_parity,
)
from training.checkpoint import LoadedCheckpoint, load_checkpoint
from training.tokenizer import train_tokenizer
from tests.support.tiny_models import make_tiny_checkpoint

CPU = ["CPUExecutionProvider"]


@dataclass
class Exported:
    checkpoint: LoadedCheckpoint
    model: Path
    tokenizer: Path
    texts: list[str]
    labels: list[str]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("parity")
    checkpoint = load_checkpoint(make_tiny_checkpoint(root, cell="lstm", bidirectional=True, pooling="mean"))
    model = export_onnx(checkpoint.model, root / "model.onnx")
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(checkpoint.raw["tokenizer_json"], encoding="utf-8")
    texts, labels = load_test_split(checkpoint.manifest_path)
    return Exported(checkpoint, model, tokenizer, texts, labels)


def parity(e: Exported, **kwargs) -> dict:
    options = {"test_texts": e.texts, "test_labels": e.labels, "providers": CPU} | kwargs
    return run_parity(e.checkpoint, options.pop("model", e.model), options.pop("tokenizer", e.tokenizer), **options)


def test_passes_on_a_good_export_and_records_session_providers(exported: Exported) -> None:
    report = parity(exported)
    assert report["passed"], report
    assert report["failures"] == [] and report["waivers"] == [] and report["num_test_texts"] == len(exported.texts) > 0
    cpu = report["providers"]["CPUExecutionProvider"]
    assert cpu["session_providers"] == ["CPUExecutionProvider"]
    assert cpu["max_abs_prob_diff"] <= report["bounds"]["max_abs_prob"] == 1e-5


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_no_test_texts_fails_unless_allowed_and_then_says_so(exported: Exported, quantization: str) -> None:
    refused = parity(exported, test_texts=None, test_labels=None, quantization=quantization)
    assert not refused["passed"] and refused["providers"]["CPUExecutionProvider"]["passed"]  # only the missing split
    assert any(f.startswith("no test texts") for f in refused["failures"]), refused["failures"]
    if quantization == "int8":  # the accuracy-drop bound is never skipped silently
        assert any("accuracy-drop bound cannot be checked" in f for f in refused["failures"])
    allowed = parity(exported, test_texts=None, test_labels=None, quantization=quantization, allow_no_test_texts=True)
    assert allowed["passed"] and allowed["num_test_texts"] == 0 and allowed["failures"] == []
    assert allowed["waivers"] and all("allowed explicitly" in w for w in allowed["waivers"])
    if quantization == "int8":
        assert "accuracy-drop bound cannot be checked" in allowed["waivers"][0]


def test_test_texts_without_usable_labels_fail(exported: Exported) -> None:
    no_labels = parity(exported, test_labels=None, quantization="int8", allow_no_test_texts=True)
    assert not no_labels["passed"] and "labels" in no_labels["failures"][0]
    unknown = parity(exported, test_labels=["no-such-label"] * len(exported.texts))
    assert not unknown["passed"] and "not in the checkpoint's labels" in unknown["failures"][0]


def test_a_provider_that_falls_back_fails(exported: Exported) -> None:
    """Asking onnxruntime for an execution provider it cannot give yields a session on the CPU
    (a warning, no error); parity must call that a failure, not a pass on the wrong provider."""
    missing = next(p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
                   if p not in ort.get_available_providers())
    report = parity(exported, providers=[missing, "CPUExecutionProvider"])
    assert not report["passed"]
    fallback = report["providers"][missing]
    assert not fallback["passed"] and "fell back" in fallback["failures"][0]
    assert fallback["session_providers"] == ["CPUExecutionProvider"]
    assert report["providers"]["CPUExecutionProvider"]["passed"]


def shifted_head(e: Exported, path: Path, shift: float) -> Path:
    """A copy of the model whose head bias for the first label is moved by ``shift``."""
    model = onnx.load(str(e.model))
    bias = next(i for i in model.graph.initializer if len(i.dims) == 1 and i.dims[0] == len(e.checkpoint.labels))
    values = numpy_helper.to_array(bias).copy()
    values[0] += np.float32(shift)
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))
    return path


def test_probability_bound_fails_where_the_logit_bound_does_not(exported: Exported, tmp_path: Path) -> None:
    """A head bias shifted by 9e-5 keeps |Δlogit| under its 1e-4 bound but moves probabilities
    near 1/3 by ~2e-5, beyond the fp32 |Δprob| bound of 1e-5."""
    report = parity(exported, model=shifted_head(exported, tmp_path / "shifted.onnx", 9e-5))
    cpu = report["providers"]["CPUExecutionProvider"]
    assert cpu["max_abs_logit_diff"] < 1e-4
    assert not cpu["passed"] and [f.split(" ")[1] for f in cpu["failures"]] == ["|Δprob|"], cpu["failures"]


def test_int8_bounds_catch_a_broken_model(exported: Exported, tmp_path: Path) -> None:
    """INT8 bounds are looser, never absent: a head that always answers label 0 fails them."""
    report = parity(exported, model=shifted_head(exported, tmp_path / "broken.onnx", 50.0), quantization="int8")
    failures = report["providers"]["CPUExecutionProvider"]["failures"]
    assert not report["passed"]
    assert {f.split(" ")[1] for f in failures} >= {"|Δprob|", "agreement"}, failures


def test_bundle_must_agree_with_checkpoint(exported: Exported, tmp_path: Path) -> None:
    labels = exported.checkpoint.labels
    swapped = parity(exported, bundle_labels=[labels[1], labels[0], *labels[2:]])
    assert not swapped["passed"] and "bundle labels" in swapped["failures"][0]
    shorter = parity(exported, bundle_max_len=exported.checkpoint.max_len - 1)
    assert not shorter["passed"] and "max_len" in shorter["failures"][0]
    other = json.loads(exported.tokenizer.read_text(encoding="utf-8"))
    other["normalizer"] = None  # no NFKC/Lowercase: same vocabulary, different ids for "Market"
    (tmp_path / "tokenizer.json").write_text(json.dumps(other), encoding="utf-8")
    changed = parity(exported, tokenizer=tmp_path / "tokenizer.json")
    assert not changed["passed"] and "tokenizer.json differs" in changed["failures"][0]


def test_edge_cases_use_the_vocabulary_and_encode_to_distinct_inputs(exported: Exported) -> None:
    encoder = exported.checkpoint.encoder
    cases = edge_case_texts(encoder)
    assert edge_case_problems(encoder, cases) == []
    batch = encoder.encode_batch(list(cases.values()))
    ids = {n: tuple(r[: int(k)].tolist()) for n, r, k in zip(cases, batch.input_ids, batch.lengths)}
    for name in VOCABULARY_EDGE_CASES:
        assert UNK_ID not in ids[name], name
    # distinct model inputs apart from what the contract makes equal (no tokens, truncation)
    merged = sum(len(group) - 1 for group in EDGE_CASES_EQUAL_BY_CONTRACT)
    assert len(set(ids.values())) == len(cases) - merged
    for group in EDGE_CASES_EQUAL_BY_CONTRACT:
        assert len({ids[name] for name in group}) == 1
    assert len(ids["far_beyond_max_len"]) == len(ids["long_in_vocab_shuffled"]) == encoder.max_len
    short, long = ids["padding_twin_short"], ids["padding_twin_long"]
    assert long[: len(short)] == short and len(long) > len(short)  # identical up to padding
    mixed = ids["mixed_in_vocab_and_oov"]
    assert UNK_ID in mixed and set(mixed) != {UNK_ID}
    assert 0 in ids["literal_special_tokens"]  # "[PAD]" typed in a text is the pad id, inside the length


def test_edge_case_check_fails_on_a_vocabulary_without_words() -> None:
    tokenizer = train_tokenizer(["!!! ??? ... ,,,"] * 3, vocab_size=50, min_frequency=1)
    encoder = TextEncoder(tokenizer, max_len=8)
    problems = edge_case_problems(encoder, edge_case_texts(encoder))
    assert any("contains [UNK]" in p for p in problems) and any("same ids" in p for p in problems)


def test_int8_parity_bounds_batch_invariance_in_probability(exported: Exported, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The service batches dynamically, and dynamic INT8 moves a text's answer with its batch-mates:
    parity bounds that movement (probability, test split) instead of only reporting it."""
    from export.optimize import quantize_int8

    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(exported.model, int8)
    report = parity(exported, model=int8, quantization="int8")
    cpu = report["providers"]["CPUExecutionProvider"]
    assert report["bounds"]["max_batch_invariance_prob"] == 0.05
    assert 0 < cpu["batch_invariance_max_abs_prob_test"] <= 0.05, cpu  # > 0: really dynamic INT8
    assert report["passed"], report["failures"]
    monkeypatch.setattr("export.parity.INT8_BATCH_INVARIANCE_MAX_ABS_PROB", 1e-12)  # a bound it cannot meet
    strict = parity(exported, model=int8, quantization="int8")["providers"]["CPUExecutionProvider"]
    assert not strict["passed"] and any("batch invariance in probability" in f for f in strict["failures"])
