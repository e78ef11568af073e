"""golden.json: a handful of texts -> ids -> logits from the exported model, shipped in the bundle.

A client in any language reproduces them with its own tokenizer binding and onnxruntime by
following docs/CONTRACTS.md ("Using model.onnx from any onnxruntime");
``scripts/check_golden.py`` does it with nothing but ``tokenizers``, ``onnxruntime``, ``numpy``
and ``json`` (tests/export/test_golden.py runs it in a fresh interpreter).

Every logit row is the model's answer to that text scored alone (a batch of one), so the file
is exact for INT8 models too (their answers move with the batch; fp32 answers do not).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bundle.card import INPUT_IDS, INPUT_LENGTHS
from bundle.tokenization import PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, TextEncoder

logger = logging.getLogger(__name__)

GOLDEN_FORMAT = "textclf-golden/1"
# Cross-machine tolerance a client should use: fp32 kernels differ in summation order across
# CPUs/versions (~1e-6 measured here); dynamic INT8 can round activations differently.
GOLDEN_ATOL = {"none": 1e-4, "int8": 5e-2}
EDGE_CASES_IN_GOLDEN = ("empty", "far_beyond_max_len", "padding_twin_short", "mixed_in_vocab_and_oov",
                        "literal_special_tokens", "emoji", "control_chars")


def golden_texts(test_texts: list[str], edge_cases: dict[str, str], num_test: int = 4) -> list[str]:
    """The first test texts plus the edge cases that pin the contract (empty, truncation, OOV,
    literal special tokens, Unicode/control characters)."""
    return list(test_texts[:num_test]) + [edge_cases[name] for name in EDGE_CASES_IN_GOLDEN if name in edge_cases]


def golden_fixtures(
    model_path: str | Path, encoder: TextEncoder, texts: list[str], labels: list[str], quantization: str
) -> dict[str, Any]:
    """Score each text alone on the CPU provider and record ids, lengths, logits, probabilities."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    cases = []
    for text in texts:
        batch = encoder.encode_batch([text])
        logits = session.run(None, {INPUT_IDS: batch.input_ids, INPUT_LENGTHS: batch.lengths})[0][0]
        shifted = np.exp(logits.astype(np.float64) - logits.max())
        probabilities = shifted / shifted.sum()
        cases.append({
            "text": text,
            "input_ids": batch.input_ids[0].tolist(),
            "length": int(batch.lengths[0]),
            "logits": [float(v) for v in logits],
            "probabilities": [float(v) for v in probabilities],
            "label": labels[int(np.argmax(logits))],
        })
    return {
        "format": GOLDEN_FORMAT,
        "max_len": encoder.max_len,
        "labels": list(labels),
        "pad_id": PAD_ID,
        "pad_token": PAD_TOKEN,
        "unk_id": UNK_ID,
        "unk_token": UNK_TOKEN,
        "quantization": quantization,
        "atol_logits": GOLDEN_ATOL.get(quantization, GOLDEN_ATOL["int8"]),
        "cases": cases,
    }


def write_golden(path: str | Path, golden: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("golden fixtures: %d texts -> %s", len(golden["cases"]), path)
    return path
