"""The parity suite: a checkpoint and its ONNX bundle must give the same answers on raw texts.

End to end (tokenizer included) over the saved test split plus generated edge cases, on every
available onnxruntime execution provider. Checks max |Δlogit|, max |Δprobability|, argmax
agreement, accuracy, and batch invariance (each text alone vs inside seeded random batches of
mixed lengths). The report is compact and JSON-serialisable; ``report["passed"]`` is a bool.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bundle.card import INPUT_IDS, INPUT_LENGTHS
from bundle.inference import CPU_PROVIDER, CUDA_PROVIDER, softmax
from bundle.tokenization import TextEncoder
from training.checkpoint import LoadedCheckpoint

logger = logging.getLogger(__name__)

MAX_RANDOM_BATCH = 128
REFERENCE_BATCH = 64


@dataclass(frozen=True)
class Bounds:
    max_abs_logit: float | None  # None: not bounded
    min_argmax_agreement: float
    max_batch_invariance: float | None
    max_accuracy_drop: float | None

    @classmethod
    def for_quantization(cls, quantization: str) -> "Bounds":
        if quantization == "int8":
            # Dynamic INT8 scales activations per batch: invariance is reported, not bounded.
            return cls(max_abs_logit=None, min_argmax_agreement=0.99, max_batch_invariance=None, max_accuracy_drop=0.01)
        return cls(max_abs_logit=1e-4, min_argmax_agreement=1.0, max_batch_invariance=1e-5, max_accuracy_drop=None)


def edge_case_texts(encoder: TextEncoder) -> dict[str, str]:
    """Generated inputs that stress the tokenizer/model boundary. Names are report keys."""
    vocab = encoder.tokenizer.get_vocab()
    words = [w for w, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= 2 and w.isalpha()] or ["a"]
    word = words[0]
    cycle = (words * (encoder.max_len * 5 // len(words) + 2))
    cases = {
        "one_token": word,
        "empty": "",
        "whitespace": " \t\n\r  \u3000 ",
        "exactly_max_len": " ".join(cycle[: encoder.max_len]),
        "max_len_plus_one": " ".join(cycle[: encoder.max_len + 1]),
        "far_beyond_max_len": " ".join(cycle[: encoder.max_len * 5]),
        "cyrillic": "Центральный банк повысил ключевую ставку до шестнадцати процентов",
        "greek": "Η κυβέρνηση ανακοίνωσε νέα μέτρα για την οικονομία",
        "cjk": "日本の首相は経済対策を発表した。中国股市今天大幅上涨。",
        "emoji": "🚀📈 stocks 🔥🔥 surge 🎉 🏳️‍🌈 👍🏽",
        "mixed_scripts": f"{word} Москва Αθήνα 東京 🙂 {words[-1]} café naïve",
        "control_chars": f"{word}\x00\x01\x07\x1b[31m zero\u200bwidth\ufeff bom \x7f{word}\u2028line",
        "unknown_words_only": "zzqxv qqqpt xyzzyplugh",
        "punctuation_only": "!!! ??? ... ,,, ---",
    }
    ids = encoder.token_ids([cases["exactly_max_len"]])[0]
    if len(ids) != encoder.max_len:  # the generated words must map to one token each
        logger.warning("exactly_max_len case encodes to %d tokens, not %d", len(ids), encoder.max_len)
    return cases


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
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    return ort.InferenceSession(str(model_path), providers=providers)


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
    per_edge = logit_diff[num_test:].max(axis=1) if len(edge_names) else np.zeros(0)
    result: dict[str, Any] = {
        "max_abs_logit_diff": float(logit_diff.max()),
        "max_abs_prob_diff": float(prob_diff.max()),
        "argmax_agreement": float(agree.mean()),
        "argmax_disagreements": int((~agree).sum()),
        "batch_invariance_max_abs_diff": invariance,
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
    if result["argmax_agreement"] < bounds.min_argmax_agreement:
        failures.append(f"argmax agreement {result['argmax_agreement']:.4f} < {bounds.min_argmax_agreement:g}")
    if bounds.max_batch_invariance is not None and invariance > bounds.max_batch_invariance:
        failures.append(f"batch invariance {invariance:.3g} > {bounds.max_batch_invariance:g}")
    if bounds.max_accuracy_drop is not None and result.get("accuracy_drop", 0.0) > bounds.max_accuracy_drop:
        failures.append(f"accuracy drop {result['accuracy_drop']:.4f} > {bounds.max_accuracy_drop:g}")
    if not np.isfinite(batched).all():
        failures.append("non-finite logits")
    result["failures"] = failures
    result["passed"] = not failures
    return result


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
) -> dict[str, Any]:
    """Compare the checkpoint with the ONNX model (+ its own tokenizer file) on raw texts.

    The bundle's tokenizer.json is used for the ONNX side, the checkpoint's tokenizer for the
    PyTorch side, so a tokenizer mismatch shows up as a parity failure too.
    """
    started = time.perf_counter()
    bounds = Bounds.for_quantization(quantization)
    bundle_encoder = TextEncoder.from_file(tokenizer_path, checkpoint.max_len)
    test_texts = list(test_texts or [])
    edges = edge_case_texts(checkpoint.encoder)
    texts = test_texts + list(edges.values())
    label_ids = None
    if test_labels is not None and test_texts:
        index = {label: i for i, label in enumerate(checkpoint.labels)}
        label_ids = np.array([index.get(label, -1) for label in test_labels])
    reference = torch_logits(checkpoint, texts)
    wanted = providers or available_providers()
    results: dict[str, Any] = {}
    for provider in wanted:
        if provider not in ort.get_available_providers():
            results[provider] = {"passed": False, "failures": [f"{provider} is not available"]}
            continue
        logger.info("parity on %s: %d test texts + %d edge cases", provider, len(test_texts), len(edges))
        session = make_session(model_path, provider)
        results[provider] = compare_provider(
            session, bundle_encoder, texts, reference, label_ids, len(test_texts), list(edges), bounds, seed
        )
    report = {
        "passed": bool(results) and all(r["passed"] for r in results.values()),
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
