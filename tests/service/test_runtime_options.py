"""onnxruntime session options the service sets from its settings."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from bundle.card import INPUT_IDS, INPUT_LENGTHS
from bundle.inference import CPU_PROVIDER
from bundle.store import verify_bundle
from bundle.tokenization import pad
from service.runtime import ModelRuntime
from tests.support.tiny_models import make_tiny_bundle

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _spinning(server) -> set[str]:
    options = server.app.repository.get("news").runtime.session.get_session_options()
    return {options.get_session_config_entry(key) for key in SPIN_KEYS}


def test_intra_op_spinning_is_off_by_default(server) -> None:
    # idle pool threads spinning for work take the CPU the event loop needs (docs/benchmarks.md)
    assert _spinning(server) == {"0"}


@pytest.mark.parametrize("spinning, expected", [(True, "1"), (False, "0")])
def test_intra_op_spinning_follows_the_setting(bundles, start_server, spinning: bool, expected: str) -> None:
    server = start_server(intra_op_spinning=spinning)
    assert _spinning(server) == {expected}


@pytest.fixture(scope="module")
def wide_lstm(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    """A bi-LSTM wide enough (hidden 64, embedding 128, like the default model) that onnxruntime
    splits a batch over every intra-op thread it is given."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("wide") / "models", name="wide", cell="lstm",
                              hidden_size=64, embedding_dim=128, max_len=256)
    return ModelRuntime.load(bundle, verify_bundle(bundle), providers=[CPU_PROVIDER], intra_op_threads=1,
                             inter_op_threads=1, spinning=False, batching=True)


def _cores_used(run: Callable[[list[np.ndarray]], object], rows: list[np.ndarray], batches: int = 20) -> float:
    """CPU seconds of this process per wall second while ``run`` computes ``batches`` batches."""
    run(rows)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        run(rows)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _batch(runtime: ModelRuntime, texts: int = 32) -> list[np.ndarray]:
    vocab = runtime.encoder.tokenizer.get_vocab_size()
    return [np.arange(texts + i, texts + i + runtime.encoder.max_len, dtype=np.int64) % (vocab - 1) + 1
            for i in range(texts)]


def test_batches_compute_on_the_configured_intra_op_threads(wide_lstm: ModelRuntime) -> None:
    """RunAsync needs a pool thread besides the caller's, so the batch session has one intra-op
    thread more than ``intra_op_threads`` (docs/service.md "Where batches compute"); the batch runs
    on that pool thread and still computes on one thread, as every peer in bench/peers is set up.
    The control: the same session run synchronously splits the batch over both threads (~2 cores
    on an idle machine); when it cannot, the machine is too busy for the measurement to mean anything."""
    batch_options = wide_lstm.batch_session.get_session_options()
    assert (wide_lstm.session.get_session_options().intra_op_num_threads, batch_options.intra_op_num_threads) == (1, 2)
    rows = _batch(wide_lstm)
    input_ids, lengths = pad(rows)
    async_cores = _cores_used(wide_lstm.run_batch_blocking, rows)
    sync_cores = _cores_used(lambda _: wide_lstm.batch_session.run(None, {INPUT_IDS: input_ids,
                                                                             INPUT_LENGTHS: lengths}), rows)
    if sync_cores < 1.5:  # the other core is busy: one thread and two look alike, nothing to conclude
        pytest.skip(f"too busy a machine to tell one compute thread from two (two threads used {sync_cores:.2f} cores)")
    assert async_cores < 1.3, f"a batch took {async_cores:.2f} cores (two threads: {sync_cores:.2f})"


def test_the_batch_session_answers_as_the_other_session(wide_lstm: ModelRuntime) -> None:
    rows = _batch(wide_lstm, texts=8)[:7] + [np.array([5], dtype=np.int64)]  # ragged: one row of one token
    np.testing.assert_allclose(wide_lstm.run_batch_blocking(rows), wide_lstm.run(rows), atol=1e-6, rtol=0)


def test_batch_errors_reach_the_caller(wide_lstm: ModelRuntime) -> None:
    vocab = wide_lstm.encoder.tokenizer.get_vocab_size()
    with pytest.raises(RuntimeError, match="out of data bounds|Gather"):
        wide_lstm.run_batch_blocking([np.array([vocab + 5], dtype=np.int64)])
    assert wide_lstm.run_batch_blocking([np.array([3], dtype=np.int64)]).shape == (1, len(wide_lstm.card.labels))


def test_without_batching_there_is_no_batch_session(bundles, tmp_path) -> None:
    path = bundles[1].path
    runtime = ModelRuntime.load(path, verify_bundle(path), providers=[CPU_PROVIDER], intra_op_threads=1)
    assert runtime.batch_session is None
    with pytest.raises(RuntimeError, match="no batch session"):
        runtime.run_async([np.array([1], dtype=np.int64)], lambda *_: None)
