"""One model version at run time: the bundle's tokenizer + an onnxruntime session + labels.

Blocking methods (``load``, ``run``, ``warmup``) are called from worker threads, never from the
event loop; onnxruntime releases the GIL while it computes.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bundle.card import INPUT_IDS, INPUT_LENGTHS, MODEL_FILE, OUTPUT_LOGITS, TOKENIZER_FILE, ModelCard
from bundle.inference import CPU_PROVIDER, CUDA_PROVIDER, softmax
from bundle.tokenization import EncodedText, TextEncoder, pad

logger = logging.getLogger(__name__)

CPU, CUDA = CPU_PROVIDER, CUDA_PROVIDER
_warned_no_cuda = False


class RuntimeConfigError(RuntimeError):
    """The requested execution provider cannot be used in this installation."""


def resolve_providers(choice: str) -> list[str]:
    """``cpu`` | ``cuda`` | ``auto`` -> onnxruntime provider list."""
    global _warned_no_cuda
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise RuntimeConfigError(
                f"providers=cuda but this onnxruntime has no {CUDA} (available: {', '.join(available)}); "
                "install onnxruntime-gpu or use providers=auto|cpu")
        return [CUDA, CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if not _warned_no_cuda:
        logger.warning("providers=auto: %s not available in onnxruntime, running on CPU", CUDA)
        _warned_no_cuda = True
    return [CPU]


class ModelRuntime:
    def __init__(self, bundle_dir: Path, card: ModelCard, session: ort.InferenceSession, encoder: TextEncoder) -> None:
        self.bundle_dir = bundle_dir
        self.card = card
        self.session = session
        self.encoder = encoder
        self.num_labels = len(card.labels)

    @classmethod
    def load(cls, bundle_dir: Path, card: ModelCard, *, providers: list[str], intra_op_threads: int = 0,
             inter_op_threads: int = 0, spinning: bool = True) -> "ModelRuntime":
        """Build the session and tokenizer; raises on any file onnxruntime or tokenizers reject."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        # onnxruntime's default: idle pool threads spin for work, which steals the CPU the server's
        # event loop needs between batches (docs/benchmarks.md); the service turns it off by default
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(bundle_dir / MODEL_FILE), sess_options=options, providers=providers)
        names = {i.name for i in session.get_inputs()}
        if names != {INPUT_IDS, INPUT_LENGTHS}:
            raise ValueError(f"model inputs are {sorted(names)}, expected {INPUT_IDS!r} and {INPUT_LENGTHS!r}")
        if OUTPUT_LOGITS not in {o.name for o in session.get_outputs()}:
            raise ValueError(f"model has no {OUTPUT_LOGITS!r} output")
        encoder = TextEncoder.from_file(bundle_dir / TOKENIZER_FILE, int(card.max_len))
        runtime = cls(bundle_dir, card, session, encoder)
        # one tiny inference, also when warm-up is off: `run` checks that the logits have one
        # column per label, so a model that disagrees with its card never gets traffic
        runtime.run([np.array([1], dtype=np.int64)])
        return runtime

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Ragged token ids with the bundle's encoder (the same code path as training and parity;
        bounded work per text, bundle/tokenization.py)."""
        return self.encoder.encode(texts)

    def run(self, rows: list[np.ndarray]) -> np.ndarray:
        """Pad ``rows`` (ragged token ids) into one batch, the only padding on the request path, and
        return probabilities (B, C) float32."""
        input_ids, lengths = pad(rows)
        (logits,) = self.session.run([OUTPUT_LOGITS], {INPUT_IDS: input_ids, INPUT_LENGTHS: lengths})
        if logits.ndim != 2 or logits.shape != (len(rows), self.num_labels):
            raise ValueError(f"model returned logits of shape {logits.shape}, expected ({len(rows)}, {self.num_labels})")
        return softmax(logits)

    def warmup(self, max_batch_size: int) -> None:
        """Exercise the shapes traffic will use (batch 1 and full, short and max length) and check outputs."""
        short = [np.array([1], dtype=np.int64)]
        longest = np.ones(self.encoder.max_len, dtype=np.int64)
        full = max(1, min(max_batch_size, 64))
        for rows in (short, [longest], short * full, [longest] * full, short + [longest]):
            probs = self.run(rows)
            if not np.all(np.isfinite(probs)):
                raise ValueError("model returned non-finite probabilities during warm-up")
