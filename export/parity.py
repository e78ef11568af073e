"""The parity suite: a checkpoint and its ONNX bundle must give the same answers on raw texts.

End to end (tokenizer included) over the saved test split plus generated edge cases, on every
available onnxruntime execution provider. Checks max |Δlogit|, max |Δprobability|, argmax
agreement, accuracy, and batch invariance (each text alone vs inside seeded random batches of
mixed lengths). The report is compact and JSON-serialisable; ``report["passed"]`` is a bool.

The suite refuses to pass vacuously: no labelled test texts is a failure unless explicitly
allowed (then ``report["waivers"]`` says what was not checked); a session that runs on another
provider than the one asked for fails; the bundle's labels, ``max_len`` and tokenizer must equal
the checkpoint's; the edge cases must encode to distinct id sequences (the groups in
``EDGE_CASES_EQUAL_BY_CONTRACT`` apart), so a small vocabulary cannot turn them all into the
same ``[UNK]`` input.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bundle.card import INPUT_IDS, INPUT_LENGTHS
from bundle.inference import CPU_PROVIDER, CUDA_PROVIDER, softmax
from bundle.tokenization import UNK_ID, TextEncoder
from export.optimize import INT8_BATCH_INVARIANCE_MAX_ABS_PROB
from training.checkpoint import LoadedCheckpoint

logger = logging.getLogger(__name__)

MAX_RANDOM_BATCH = 128
REFERENCE_BATCH = 64
# INT8 |Δprobability| bound (any text, any batch); docs/export.md ("INT8 bounds") has the
# measurements behind it: up to 0.40 on one test text of a bi-LSTM, so this catches broken
# models, not quantisation noise (argmax agreement and accuracy drop bound that).
INT8_MAX_ABS_PROB = 0.5


@dataclass(frozen=True)
class Bounds:
    max_abs_logit: float | None  # None: not bounded
    max_abs_prob: float
    min_argmax_agreement: float
    max_batch_invariance: float | None  # max |logit alone - logit in a batch| (None: not bounded)
    max_accuracy_drop: float | None
    # max |probability alone - probability in a batch| on the test split (INT8: dynamic activation
    # scales move answers with their batch-mates; the service batches dynamically)
    max_batch_invariance_prob: float | None = None
    # INT8: argmax agreement is judged on the test split (natural texts); the edge cases are
    # near-ties by design (all-[UNK], foreign scripts) and flip under quantisation noise.
    argmax_on_test_split: bool = False

    @classmethod
    def for_quantization(cls, quantization: str) -> "Bounds":
        if quantization == "int8":
            # Dynamic INT8 scales activations per batch: logit invariance is reported; the test
            # split's probabilities are bounded by INT8_BATCH_INVARIANCE_MAX_ABS_PROB.
            return cls(max_abs_logit=None, max_abs_prob=INT8_MAX_ABS_PROB, min_argmax_agreement=0.99,
                       max_batch_invariance=None, max_accuracy_drop=0.01, argmax_on_test_split=True,
                       max_batch_invariance_prob=INT8_BATCH_INVARIANCE_MAX_ABS_PROB)
        return cls(max_abs_logit=1e-4, max_abs_prob=1e-5, min_argmax_agreement=1.0, max_batch_invariance=1e-5,
                   max_accuracy_drop=None)


class ProviderFallback(Exception):
    """onnxruntime built the session on another execution provider than the one asked for."""

    def __init__(self, wanted: str, got: list[str]) -> None:
        super().__init__(f"asked for {wanted}, the session runs on {got}: fell back")
        self.got = got


# Groups of inputs that encode to the same ids by the tokenizer contract: no tokens -> one
# [UNK]; a text longer than max_len keeps its first max_len tokens.
EDGE_CASES_EQUAL_BY_CONTRACT = (
    frozenset({"empty", "whitespace"}),
    frozenset({"exactly_max_len", "max_len_plus_one", "far_beyond_max_len"}),
)
# Cases built only from vocabulary words: they must encode without a single [UNK].
VOCABULARY_EDGE_CASES = ("one_token", "exactly_max_len", "max_len_plus_one", "far_beyond_max_len",
                         "long_in_vocab_shuffled", "padding_twin_short", "padding_twin_long")


def vocabulary_words(encoder: TextEncoder, limit: int = 2000) -> list[str]:
    """Alphabetic vocabulary words that encode to exactly their own single id (lowest ids first)."""
    vocab = encoder.tokenizer.get_vocab()
    candidates = [w for w, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i > UNK_ID and w.isalpha()][:limit]
    if not candidates:
        return []
    encoded = encoder.token_ids(candidates)
    return [w for w, ids in zip(candidates, encoded) if ids == [vocab[w]]]


def edge_case_texts(encoder: TextEncoder, seed: int = 0) -> dict[str, str]:
    """Generated inputs that stress the tokenizer/model boundary. Names are report keys.

    Built from the model's real vocabulary where that matters (long in-vocabulary texts, texts
    identical up to padding, in-vocabulary words mixed with OOV words and other scripts), so the
    model sees distinct, meaningful inputs and not a run of [UNK]s.
    """
    words = vocabulary_words(encoder) or ["a"]
    rng = np.random.default_rng(seed)
    max_len = encoder.max_len
    cycle = words * (max_len * 5 // len(words) + 2)
    shuffled = [words[i] for i in rng.integers(0, len(words), max_len * 3)]
    pick = lambda k: words[k % len(words)]  # noqa: E731
    twin = [pick(3 * k + 1) for k in range(max(1, min(5, max_len - 1)))]
    return {
        "one_token": words[0],
        "empty": "",
        "whitespace": " \t\n\r  \u3000 ",
        "exactly_max_len": " ".join(cycle[:max_len]),
        "max_len_plus_one": " ".join(cycle[: max_len + 1]),
        "far_beyond_max_len": " ".join(cycle[: max_len * 5]),
        "long_in_vocab_shuffled": " ".join(shuffled),
        # the short twin, padded inside a batch, equals the long twin with its tail replaced by [PAD]
        "padding_twin_short": " ".join(twin),
        "padding_twin_long": " ".join(twin + [pick(2), pick(5), pick(7)]),
        "mixed_in_vocab_and_oov": " ".join(f"{pick(k)} zzqx{k}v" for k in range(6)),
        "literal_special_tokens": f"{pick(4)} [PAD] [UNK] {pick(6)} [PAD]",
        "cyrillic": f"Центральный банк повысил {pick(8)} ключевую ставку до шестнадцати процентов",
        "greek": f"Η κυβέρνηση {pick(9)} ανακοίνωσε νέα μέτρα για την οικονομία",
        "cjk": f"日本の首相は経済対策を発表した。{pick(10)} 中国股市今天大幅上涨。",
        "emoji": f"🚀📈 {pick(11)} 🔥🔥 {pick(12)} 🎉 🏳️‍🌈 👍🏽",
        "mixed_scripts": f"{pick(13)} Москва Αθήνα 東京 🙂 {words[-1]} café naïve",
        "control_chars": f"{pick(14)}\x00\x01\x07\x1b[31m zero\u200bwidth\ufeff bom \x7f{pick(15)}\u2028line",
        "unknown_words_only": "zzqxv qqqpt xyzzyplugh",
        "punctuation_only": "!!! ??? ... ,,, ---",
    }


def edge_case_problems(encoder: TextEncoder, cases: dict[str, str]) -> list[str]:
    """Why the generated edge cases would not test what their names say (empty list: they do)."""
    encoded = encoder.encode_batch(list(cases.values()))
    ids = {name: tuple(row[: int(length)].tolist())
           for name, row, length in zip(cases, encoded.input_ids, encoded.lengths)}
    raw_lengths = {name: len(t) for name, t in zip(cases, encoder.token_ids(list(cases.values())))}
    problems = []
    for name in VOCABULARY_EDGE_CASES:
        if name in ids and UNK_ID in ids[name]:
            problems.append(f"edge case {name!r} contains [UNK]: the vocabulary has too few usable words")
    for name, want in (("exactly_max_len", encoder.max_len), ("max_len_plus_one", encoder.max_len + 1)):
        if name in raw_lengths and raw_lengths[name] != want:
            problems.append(f"edge case {name!r} encodes to {raw_lengths[name]} tokens, not {want}")
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, seq in ids.items():
        groups.setdefault(seq, []).append(name)
    for names in groups.values():
        if len(names) > 1 and set(names) not in EDGE_CASES_EQUAL_BY_CONTRACT:
            problems.append(f"edge cases {names} encode to the same ids")
    return problems


def torch_logits(checkpoint: LoadedCheckpoint, texts: list[str], batch_size: int = REFERENCE_BATCH) -> np.ndarray:
    """Reference logits from the eager (packed) PyTorch model."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = checkpoint.encoder.encode_batch(texts[start : start + batch_size])
            logits = checkpoint.model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.lengths))
            outputs.append(logits.float().numpy())
    return np.concatenate(outputs)


def onnx_logits(session: ort.InferenceSession, encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    enc = encoder.encode_batch(texts)
    return session.run(None, {INPUT_IDS: enc.input_ids, INPUT_LENGTHS: enc.lengths})[0]


def random_batches(n: int, rng: np.random.Generator, max_size: int = MAX_RANDOM_BATCH) -> list[np.ndarray]:
    """Shuffle 0..n-1 into consecutive batches of random sizes 1..max_size (mixed lengths)."""
    order = rng.permutation(n)
    batches, start = [], 0
    while start < n:
        size = int(rng.integers(1, max_size + 1))
        batches.append(order[start : start + size])
        start += size
    return batches


def available_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in (CPU_PROVIDER, CUDA_PROVIDER) if p in available]


def make_session(model_path: str | Path, provider: str) -> ort.InferenceSession:
    """A session that really runs on ``provider``; raises ProviderFallback when onnxruntime
    quietly built it on another one (e.g. CUDA asked, library or driver missing, CPU given)."""
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in available provider names.*")
        session = ort.InferenceSession(str(model_path), providers=providers)
    got = session.get_providers()
    if not got or got[0] != provider:
        raise ProviderFallback(provider, got)
    return session


def compare_provider(
    session: ort.InferenceSession,
    encoder: TextEncoder,
    texts: list[str],
    reference: np.ndarray,
    label_ids: np.ndarray | None,
    num_test: int,
    edge_names: list[str],
    bounds: Bounds,
    seed: int,
) -> dict[str, Any]:
    """All checks for one execution provider. ``texts[:num_test]`` are the labelled test texts."""
    alone = np.concatenate([onnx_logits(session, encoder, [t]) for t in texts])
    batched = np.empty_like(alone)
    rng = np.random.default_rng(seed)
    batches = random_batches(len(texts), rng)
    for idx in batches:
        batched[idx] = onnx_logits(session, encoder, [texts[i] for i in idx])
    logit_diff = np.abs(batched - reference)
    prob_diff = np.abs(softmax(batched) - softmax(reference))
    agree = batched.argmax(1) == reference.argmax(1)
    invariance = float(np.abs(batched - alone).max())
    judged_rows = slice(0, num_test) if num_test else slice(None)
    invariance_prob = float(np.abs(softmax(batched[judged_rows]) - softmax(alone[judged_rows])).max())
    per_edge = logit_diff[num_test:].max(axis=1) if len(edge_names) else np.zeros(0)
    result: dict[str, Any] = {
        "max_abs_logit_diff": float(logit_diff.max()),
        "max_abs_prob_diff": float(prob_diff.max()),
        "argmax_agreement": float(agree.mean()),
        "argmax_disagreements": int((~agree).sum()),
        "test_argmax_agreement": float(agree[:num_test].mean()) if num_test else None,
        "edge_argmax_disagreements": int((~agree[num_test:]).sum()),
        "batch_invariance_max_abs_diff": invariance,
        "batch_invariance_max_abs_prob_test": invariance_prob,
        "random_batches": len(batches),
        "edge_cases_max_abs_logit_diff": {n: float(d) for n, d in zip(edge_names, per_edge)},
    }
    if label_ids is not None and num_test:
        acc_torch = float((reference[:num_test].argmax(1) == label_ids).mean())
        acc_onnx = float((batched[:num_test].argmax(1) == label_ids).mean())
        result.update(accuracy_torch=acc_torch, accuracy_onnx=acc_onnx, accuracy_drop=acc_torch - acc_onnx)
    failures = []
    if bounds.max_abs_logit is not None and result["max_abs_logit_diff"] > bounds.max_abs_logit:
        failures.append(f"max |Δlogit| {result['max_abs_logit_diff']:.3g} > {bounds.max_abs_logit:g}")
    if not result["max_abs_prob_diff"] <= bounds.max_abs_prob:
        failures.append(f"max |Δprob| {result['max_abs_prob_diff']:.3g} > {bounds.max_abs_prob:g}")
    judged = "test_argmax_agreement" if bounds.argmax_on_test_split and num_test else "argmax_agreement"
    if result[judged] < bounds.min_argmax_agreement:
        failures.append(f"argmax agreement {result[judged]:.4f} < {bounds.min_argmax_agreement:g}"
                        + (" (test split)" if judged.startswith("test") else ""))
    if bounds.max_batch_invariance is not None and invariance > bounds.max_batch_invariance:
        failures.append(f"batch invariance {invariance:.3g} > {bounds.max_batch_invariance:g}")
    if bounds.max_batch_invariance_prob is not None and invariance_prob > bounds.max_batch_invariance_prob:
        failures.append(f"batch invariance in probability {invariance_prob:.3g} > {bounds.max_batch_invariance_prob:g}"
                        + (" (test split)" if num_test else ""))
    if bounds.max_accuracy_drop is not None and "accuracy_drop" in result and result["accuracy_drop"] > bounds.max_accuracy_drop:
        failures.append(f"accuracy drop {result['accuracy_drop']:.4f} > {bounds.max_accuracy_drop:g}")
    if not np.isfinite(batched).all():
        failures.append("non-finite logits")
    result["failures"] = failures
    result["passed"] = not failures
    return result


def bundle_mismatches(
    checkpoint: LoadedCheckpoint, model_path: str | Path, tokenizer_path: str | Path, labels: list[str], max_len: int
) -> list[str]:
    """What the service would read from the bundle (labels, max_len, tokenizer.json, the
    width of ``logits``) against what the checkpoint was trained with."""
    problems = []
    if list(labels) != list(checkpoint.labels):
        problems.append(f"bundle labels {list(labels)} != checkpoint labels {checkpoint.labels}")
    if int(max_len) != checkpoint.max_len:
        problems.append(f"bundle max_len {max_len} != checkpoint max_len {checkpoint.max_len}")
    bundle_tokenizer = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    if bundle_tokenizer != json.loads(checkpoint.raw["tokenizer_json"]):
        problems.append("bundle tokenizer.json differs from the checkpoint's tokenizer")
    output = onnx.load(str(model_path), load_external_data=False).graph.output[0]
    width = output.type.tensor_type.shape.dim[-1].dim_value
    if width != len(checkpoint.labels):
        problems.append(f"model.onnx has {width or 'an unknown number of'} logits, checkpoint has {len(checkpoint.labels)} labels")
    return problems


def labelled_split_problems(
    checkpoint: LoadedCheckpoint, texts: list[str], labels: list[str] | None, bounds: Bounds
) -> tuple[list[str], np.ndarray | None]:
    """Failures about the labelled test texts, and their label ids when usable."""
    if not texts:
        what = "the accuracy-drop bound cannot be checked" if bounds.max_accuracy_drop is not None else "parity would rest on edge cases alone"
        return [f"no test texts: {what} (allow explicitly with --allow-no-test-split)"], None
    if labels is None or len(labels) != len(texts):
        return [f"{len(texts)} test texts but {0 if labels is None else len(labels)} labels"], None
    index = {label: i for i, label in enumerate(checkpoint.labels)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        return [f"test labels not in the checkpoint's labels: {unknown[:5]}"], None
    return [], np.array([index[label] for label in labels])


def run_parity(
    checkpoint: LoadedCheckpoint,
    model_path: str | Path,
    tokenizer_path: str | Path,
    *,
    quantization: str = "none",
    test_texts: list[str] | None = None,
    test_labels: list[str] | None = None,
    providers: list[str] | None = None,
    seed: int = 0,
    allow_no_test_texts: bool = False,
    bundle_labels: list[str] | None = None,
    bundle_max_len: int | None = None,
) -> dict[str, Any]:
    """Compare the checkpoint with the ONNX model (+ its own tokenizer file) on raw texts.

    The bundle's tokenizer.json and ``bundle_max_len`` (default: the checkpoint's) are used for
    the ONNX side, the checkpoint's tokenizer for the PyTorch side, so a tokenizer or max_len
    mismatch shows up as a failure too. ``allow_no_test_texts`` turns "no labelled test texts"
    from a failure into a waiver recorded in the report.
    """
    started = time.perf_counter()
    bounds = Bounds.for_quantization(quantization)
    labels = list(bundle_labels) if bundle_labels is not None else list(checkpoint.labels)
    max_len = int(bundle_max_len) if bundle_max_len is not None else checkpoint.max_len
    failures = bundle_mismatches(checkpoint, model_path, tokenizer_path, labels, max_len)
    waivers: list[str] = []
    bundle_encoder = TextEncoder.from_file(tokenizer_path, max_len)
    test_texts = list(test_texts or [])
    split_problems, label_ids = labelled_split_problems(checkpoint, test_texts, test_labels, bounds)
    if split_problems and allow_no_test_texts and not test_texts:
        waivers += [p.replace(" (allow explicitly with --allow-no-test-split)", "") + ": allowed explicitly"
                    for p in split_problems]
    else:
        failures += split_problems
    edges = edge_case_texts(checkpoint.encoder, seed=seed)
    failures += edge_case_problems(checkpoint.encoder, edges)
    texts = test_texts + list(edges.values())
    reference = torch_logits(checkpoint, texts)
    wanted = providers or available_providers()
    results: dict[str, Any] = {}
    for provider in wanted:
        logger.info("parity on %s: %d test texts + %d edge cases", provider, len(test_texts), len(edges))
        try:
            session = make_session(model_path, provider)
        except (ProviderFallback, RuntimeError, ValueError) as exc:  # ORT raises RuntimeError subclasses
            got = exc.got if isinstance(exc, ProviderFallback) else []
            results[provider] = {"passed": False, "failures": [str(exc)], "session_providers": got}
            continue
        results[provider] = {"session_providers": session.get_providers()} | compare_provider(
            session, bundle_encoder, texts, reference, label_ids, len(test_texts), list(edges), bounds, seed
        )
    report = {
        "passed": bool(results) and not failures and all(r["passed"] for r in results.values()),
        "failures": failures,
        "waivers": waivers,
        "quantization": quantization,
        "bounds": asdict(bounds),
        "num_test_texts": len(test_texts),
        "num_edge_cases": len(edges),
        "random_batch_sizes": [1, MAX_RANDOM_BATCH],
        "seed": seed,
        "providers": results,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    header = f"{'provider':<24} {'max|Δlogit|':>12} {'max|Δprob|':>11} {'argmax':>8} {'batch-inv':>10} {'acc drop':>9}  result"
    lines = [header, "-" * len(header)]
    for provider, r in report["providers"].items():
        if "max_abs_logit_diff" not in r:
            lines.append(f"{provider:<24} {'-':>12} {'-':>11} {'-':>8} {'-':>10} {'-':>9}  FAIL {'; '.join(r['failures'])}")
            continue
        drop = r.get("accuracy_drop")
        lines.append(
            f"{provider:<24} {r['max_abs_logit_diff']:>12.2e} {r['max_abs_prob_diff']:>11.2e} "
            f"{r['argmax_agreement'] * 100:>7.2f}% {r['batch_invariance_max_abs_diff']:>10.2e} "
            f"{'-' if drop is None else f'{drop * 100:.2f}pt':>9}  "
            + ("PASS" if r["passed"] else "FAIL " + "; ".join(r["failures"]))
        )
    lines += [f"FAIL {failure}" for failure in report.get("failures", [])]
    lines += [f"WAIVED {waiver}" for waiver in report.get("waivers", [])]
    lines.append(
        f"{report['num_test_texts']} test texts + {report['num_edge_cases']} edge cases, "
        f"quantization={report['quantization']}, {report['elapsed_s']} s: {'PASSED' if report['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)


def load_test_split(manifest_path: str | None) -> tuple[list[str], list[str]] | None:
    """The checkpoint's saved test split, or None when the checkpoint records no manifest."""
    if not manifest_path:
        return None
    from training.data import load_split  # torch-free; imported lazily like the rest of training/

    return load_split(manifest_path, "test")
