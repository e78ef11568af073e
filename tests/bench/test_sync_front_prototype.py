"""The sync-front prototype (bench/prototypes/sync_front.py, issue 11's measured-and-not-kept
front end) computes what the product computes: its combining batcher answers every caller with its
own rows, batches the calls that queued while a batch computed, hands the lead on, and passes a
failure to every caller of the failed batch; served through the peer harness it gives textclf's
labels and probabilities."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "prototypes"))

from tests.bench.test_bench_peers import repository, run_bench  # noqa: E402,F401 - the module's fixture

WAIT_S = 10.0


class GatedRuntime:
    """A runtime whose first ``run`` blocks until released, so callers queue behind it."""

    def __init__(self, fail_second: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_second = fail_second

    def run(self, rows: list[np.ndarray]) -> np.ndarray:
        self.calls.append([int(r[0]) for r in rows])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S)
        elif self.fail_second:
            raise RuntimeError("onnxruntime failed")
        return np.array([[float(r[0]), -float(r[0])] for r in rows], dtype=np.float32)


def _queued(batcher, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(batcher._queue) < count:  # polled: the queue has no event of its own
        assert time.monotonic() < deadline, "callers never queued"
        time.sleep(0.001)


@pytest.mark.parametrize("fail_second", [False, True])
def test_callers_that_queue_behind_a_batch_are_computed_together_by_the_next_leader(fail_second: bool) -> None:
    import sync_front

    runtime = GatedRuntime(fail_second)
    batcher = sync_front.CombiningBatcher(runtime, max_batch_size=64)
    answers: dict[int, object] = {}

    def call(first_id: int, rows: int) -> None:
        try:
            answers[first_id] = batcher.run([np.array([first_id + i]) for i in range(rows)])
        except RuntimeError as exc:
            answers[first_id] = exc

    leader = threading.Thread(target=call, args=(10, 1))
    leader.start()
    assert runtime.entered.wait(WAIT_S)
    followers = [threading.Thread(target=call, args=(first, rows)) for first, rows in ((20, 2), (30, 1))]
    for i, thread in enumerate(followers):
        thread.start()
        _queued(batcher, i + 1)
    runtime.release.set()
    for thread in (leader, *followers):
        thread.join(WAIT_S)
    assert runtime.calls == [[10], [20, 21, 30]]  # the two followers formed one batch, in arrival order
    np.testing.assert_array_equal(answers[10], [[10.0, -10.0]])
    if fail_second:
        assert all(isinstance(answers[k], RuntimeError) for k in (20, 30))
    else:
        np.testing.assert_array_equal(answers[20], [[20.0, -20.0], [21.0, -21.0]])
        np.testing.assert_array_equal(answers[30], [[30.0, -30.0]])
    assert not batcher._computing and not batcher._queue  # the lead ended with the queue empty


def test_the_prototype_serves_textclfs_answers_through_the_peer_harness(repository, tmp_path: Path) -> None:  # noqa: F811
    _, result = run_bench(repository, tmp_path / "peers.json", ["textclf", "textclf-sync"])
    assert result["order"] == ["textclf", "textclf-sync", "textclf"] and result["problems"] == []
    assert result["agreement"]["textclf-sync"]["agrees"]
    assert all(r["requests"] > 0 and r["errors"] == {} for r in result["runs"])
