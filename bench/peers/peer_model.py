"""The textclf bundle as every peer server runs it: one tokenizer + onnxruntime recipe for all.

Imported by the peer servers inside their own venvs (numpy, tokenizers and onnxruntime only; no
textclf package there). It does what textclf's runtime does, with the same settings, so that the
comparison is about the servers and not the model code:

- ``tokenizers`` ``encode_batch_fast`` without special tokens, ids cut to ``max_len``, a text with
  no tokens -> one ``[UNK]`` (id 1), right-padded with 0, int64 ``input_ids`` + ``lengths``;
- onnxruntime CPU, 1 intra-op and 1 inter-op thread, spinning off, all graph optimisations;
- ``PROBABILITIES`` = float32 softmax of the logits (label order of model.json), ``LABEL`` = argmax.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PAD_ID, UNK_ID = 0, 1
INPUT_IDS, INPUT_LENGTHS, OUTPUT_LOGITS = "input_ids", "lengths", "logits"


class BundleModel:
    """``<repository>/<name>/<version>/``: model.onnx, tokenizer.json, model.json."""

    def __init__(self, bundle_dir: str | Path) -> None:
        bundle_dir = Path(bundle_dir)
        card = json.loads((bundle_dir / "model.json").read_text(encoding="utf-8"))
        self.labels: list[str] = list(card["labels"])
        self.label_bytes = np.array([label.encode() for label in self.labels], dtype=np.object_)
        self.max_len = int(card["max_len"])
        self.tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle_dir / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids (B, T) int64 right-padded with 0, lengths (B,) int64)."""
        rows = [enc.ids[: self.max_len] or [UNK_ID]
                for enc in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        input_ids = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
        return input_ids, lengths

    def infer(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """float32 probabilities (B, C)."""
        (logits,) = self.session.run([OUTPUT_LOGITS], {INPUT_IDS: input_ids, INPUT_LENGTHS: lengths})
        shifted = logits.astype(np.float32, copy=False) - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted, dtype=np.float32)
        return exp / exp.sum(axis=1, keepdims=True, dtype=np.float32)

    def labels_of(self, probabilities: np.ndarray) -> np.ndarray:
        """BYTES labels (B,) of the argmax columns."""
        return self.label_bytes[probabilities.argmax(axis=1)]

    def classify(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        probabilities = self.infer(*self.encode(texts))
        return probabilities, self.labels_of(probabilities)


def decode_texts(array: np.ndarray) -> list[str]:
    """A BYTES tensor ([N] or [N, 1]) -> N Python strings."""
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in np.asarray(array).reshape(-1)]
