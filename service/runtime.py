"""One model version at run time: the bundle's tokenizer + onnxruntime sessions + labels.

Blocking methods (``load``, ``warmup``) are called from worker threads; ``run`` from a worker
thread or, for the lone-request fast path's small batches, from the event loop; onnxruntime
releases the GIL while it computes.

A runtime built for batching has a second session for the batcher's batches, called only through
``run_async`` (onnxruntime's RunAsync): the batch computes on that session's own intra-op pool
thread, handed over from the event loop without a Python thread in between. A Python worker thread
must first take the GIL from the busy event loop before it can start onnxruntime, and at short c=64
that wait was as long as the computation (docs/benchmarks.md "Session 14"). RunAsync needs a pool
with at least one thread besides the caller's, so that session has one intra-op thread more than
``intra_op_threads``; the batch runs on a pool thread, which onnxruntime never joins to the caller,
so it computes on ``intra_op_threads`` threads, as the other session does
(tests/service/test_runtime_options.py). The other session serves the calls that must not wait for a
hand-off: the lone-request fast path (small batches, so it is warmed up with small shapes only) and,
with batching off, every request.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bundle.card import INPUT_IDS, INPUT_LENGTHS, MODEL_FILE, OUTPUT_LOGITS, TOKENIZER_FILE, ModelCard
from bundle.inference import CPU_PROVIDER, CUDA_PROVIDER, softmax
from bundle.tokenization import EncodedText, TextEncoder, pad

logger = logging.getLogger(__name__)

CPU, CUDA = CPU_PROVIDER, CUDA_PROVIDER
_warned_no_cuda = False

# ``run_async``'s callback, called on onnxruntime's thread: (probabilities, None) or (None, error)
BatchDone = Callable[[np.ndarray | None, Exception | None], None]


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
    def __init__(self, bundle_dir: Path, card: ModelCard, session: ort.InferenceSession, encoder: TextEncoder,
                 batch_session: ort.InferenceSession | None = None) -> None:
        self.bundle_dir = bundle_dir
        self.card = card
        self.session = session
        self.batch_session = batch_session
        self.encoder = encoder
        self.num_labels = len(card.labels)

    @classmethod
    def load(cls, bundle_dir: Path, card: ModelCard, *, providers: list[str], intra_op_threads: int = 0,
             inter_op_threads: int = 0, spinning: bool = True, batching: bool = False) -> "ModelRuntime":
        """Build the session(s) and tokenizer; raises on any file onnxruntime or tokenizers reject.
        ``batching``: also the session for ``run_async`` (module docstring)."""
        session = _session(bundle_dir, providers, intra_op_threads, inter_op_threads, spinning)
        names = {i.name for i in session.get_inputs()}
        if names != {INPUT_IDS, INPUT_LENGTHS}:
            raise ValueError(f"model inputs are {sorted(names)}, expected {INPUT_IDS!r} and {INPUT_LENGTHS!r}")
        if OUTPUT_LOGITS not in {o.name for o in session.get_outputs()}:
            raise ValueError(f"model has no {OUTPUT_LOGITS!r} output")
        batch_session = None
        if batching:  # one pool thread more: RunAsync computes on it, never on the caller's thread
            batch_threads = intra_op_threads + 1 if intra_op_threads > 0 else 0
            batch_session = _session(bundle_dir, providers, batch_threads, inter_op_threads, spinning)
        encoder = TextEncoder.from_file(bundle_dir / TOKENIZER_FILE, int(card.max_len))
        runtime = cls(bundle_dir, card, session, encoder, batch_session)
        # one tiny inference on each session, also when warm-up is off: both check that the logits
        # have one column per label, so a model that disagrees with its card never gets traffic
        probe = [np.array([1], dtype=np.int64)]
        runtime.run(probe)
        if batch_session is not None:
            try:
                runtime.run_batch_blocking(probe)
            except Exception as exc:  # the model itself ran above: this is RunAsync with these providers
                logger.warning("onnxruntime cannot run batches asynchronously with %s (%s: %s); batches of %s "
                               "run on the inference threads", ", ".join(providers), type(exc).__name__, exc,
                               bundle_dir)
                runtime.batch_session = None
        return runtime

    @property
    def runs_async(self) -> bool:
        """Batches go through ``run_async`` (else through ``run`` on a worker thread)."""
        return self.batch_session is not None

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
        return _probabilities(logits, (len(rows), self.num_labels))

    def run_async(self, rows: list[np.ndarray], done: BatchDone) -> None:
        """Pad ``rows`` into one batch and start it on the batch session's own thread; ``done`` is
        called there (with the GIL) with the probabilities (B, C) float32 or the error. Raises
        only if the batch cannot be started."""
        if self.batch_session is None:
            raise RuntimeError("this runtime was loaded without batching: it has no batch session")
        input_ids, lengths = pad(rows)
        shape = (len(rows), self.num_labels)

        # No reference to this runtime in the callback: onnxruntime drops the callback on its own
        # pool thread, and if that dropped the last reference to the session, the session would
        # join its pool from that very thread. The caller keeps the runtime alive (InferencePool).
        def finished(results: list[np.ndarray], _user_data: object, error: str) -> None:
            if error:
                done(None, RuntimeError(error))
            else:
                deliver(done, lambda: _probabilities(results[0], shape))

        self.batch_session.run_async([OUTPUT_LOGITS], {INPUT_IDS: input_ids, INPUT_LENGTHS: lengths}, finished, None)

    def run_batch_blocking(self, rows: list[np.ndarray], timeout: float = 60.0) -> np.ndarray:
        """``run_async`` waited for in this thread (load probe and warm-up)."""
        finished = threading.Event()
        outcome: list[tuple[np.ndarray | None, Exception | None]] = []

        def done(probabilities: np.ndarray | None, error: Exception | None) -> None:
            outcome.append((probabilities, error))
            finished.set()

        self.run_async(rows, done)
        if not finished.wait(timeout):
            raise TimeoutError(f"onnxruntime did not finish a batch of {len(rows)} in {timeout:.0f} s")
        probabilities, error = outcome[0]
        if error is not None:
            raise error
        assert probabilities is not None
        return probabilities

    def warmup(self, max_batch_size: int) -> None:
        """Exercise the shapes traffic will use (batch 1 and full, short and max length) and check
        outputs. With a batch session, the other session serves only the lone-request fast path's
        small batches and is warmed up with batch 1 only (its memory arena stays small)."""
        short = [np.array([1], dtype=np.int64)]
        longest = np.ones(self.encoder.max_len, dtype=np.int64)
        full = max(1, min(max_batch_size, 64))
        shapes = (short, [longest], short * full, [longest] * full, short + [longest])
        if self.runs_async:
            plan = [(self.run, rows) for rows in shapes[:2]] + [(self.run_batch_blocking, rows) for rows in shapes]
        else:
            plan = [(self.run, rows) for rows in shapes]
        for run, rows in plan:
            if not np.all(np.isfinite(run(rows))):
                raise ValueError("model returned non-finite probabilities during warm-up")


def deliver(done: BatchDone, compute: Callable[[], np.ndarray]) -> None:
    """Call ``done`` with what ``compute`` returns, or with the exception it raised."""
    try:
        probabilities = compute()
    except Exception as exc:
        done(None, exc)
        return
    done(probabilities, None)


def _probabilities(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Softmax of the logits, which must have one row per text and one column per label."""
    if logits.ndim != 2 or logits.shape != shape:
        raise ValueError(f"model returned logits of shape {logits.shape}, expected {shape}")
    return softmax(logits)


def _session(bundle_dir: Path, providers: list[str], intra_op_threads: int, inter_op_threads: int,
             spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # onnxruntime's default: idle pool threads spin for work, which steals the CPU the server's
    # event loop needs between batches (docs/benchmarks.md); the service turns it off by default
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(bundle_dir / MODEL_FILE), sess_options=options, providers=providers)
