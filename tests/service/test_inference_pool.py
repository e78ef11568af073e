"""The inference pool's slots (service/inference_pool.py): a batch holds its slot until onnxruntime
has finished it, whatever happens to its caller, and shutdown waits for every running batch. The
runtime here stands in for onnxruntime's RunAsync: each batch ends on its own thread when the test
says so, so every timing is chosen by the test."""
from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import numpy as np
import onnxruntime as ort
import pytest

from bundle.inference import CPU_PROVIDER
from bundle.store import verify_bundle
from service import inference_pool
from service.inference_pool import InferencePool
from service.runtime import ModelRuntime


class ControlledRuntime:
    """``run_async`` starts a batch that finishes (on a thread of its own, as onnxruntime's does)
    once ``finish(i)`` is called for it."""

    runs_async = True

    def __init__(self) -> None:
        self.finish_events: list[threading.Event] = []
        self._any_started = threading.Semaphore(0)

    def run_async(self, rows, done) -> None:
        if rows == ["refuse"]:
            raise ValueError("cannot start this batch")
        finish = threading.Event()
        self.finish_events.append(finish)

        def compute() -> None:
            finish.wait(30)
            if rows == ["fail"]:
                done(None, RuntimeError("onnxruntime failed"))
            else:
                done(np.full((len(rows), 2), 0.5, np.float32), None)

        threading.Thread(target=compute, daemon=True).start()
        self._any_started.release()

    def wait_started(self, count: int) -> None:
        for _ in range(count):
            assert self._any_started.acquire(timeout=10)

    def finish(self, index: int) -> None:
        self.finish_events[index].set()

    @property
    def batches_started(self) -> int:
        return len(self.finish_events)


async def _until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_cancelled_batch_keeps_its_slot_until_onnxruntime_is_done() -> None:
    """One slot. The first batch's caller is cancelled while onnxruntime computes it: the second
    batch must still wait for that computation (submit-and-cancel cannot run two batches at once)."""
    async def scenario() -> None:
        pool = InferencePool(1)
        runtime = ControlledRuntime()
        first = asyncio.ensure_future(pool.run_batch(runtime, [np.zeros(1)]))
        await asyncio.to_thread(runtime.wait_started, 1)
        first.cancel()
        second = asyncio.ensure_future(pool.run_batch(runtime, [np.zeros(1)] * 3))
        await asyncio.sleep(0.05)
        assert runtime.batches_started == 1 and not second.done(), "the second batch started beside the first"
        assert pool.batches_running == 1
        runtime.finish(0)
        await asyncio.to_thread(runtime.wait_started, 1)
        runtime.finish(1)
        assert (await second).shape == (3, 2)
        assert first.cancelled()
        await _until(lambda: pool.batches_running == 0, "no batch running")
        pool.shutdown()

    asyncio.run(scenario())


def test_slots_bound_batches_across_runtimes() -> None:
    """``inference_workers`` slots are shared by every model version: with two slots, a third
    batch (of another runtime) waits until one of the first two ends."""
    async def scenario() -> None:
        pool = InferencePool(2)
        a, b = ControlledRuntime(), ControlledRuntime()
        runs = [asyncio.ensure_future(pool.run_batch(a, [np.zeros(1)])),
                asyncio.ensure_future(pool.run_batch(a, [np.zeros(1)]))]
        await asyncio.to_thread(a.wait_started, 2)
        third = asyncio.ensure_future(pool.run_batch(b, [np.zeros(1)]))
        await asyncio.sleep(0.05)
        assert b.batches_started == 0
        a.finish(1)
        await asyncio.to_thread(b.wait_started, 1)
        a.finish(0)
        b.finish(0)
        await asyncio.gather(*runs, third)
        pool.shutdown()

    asyncio.run(scenario())


def test_errors_reach_the_caller_and_free_the_slot() -> None:
    async def scenario() -> None:
        pool = InferencePool(1)
        runtime = ControlledRuntime()
        with pytest.raises(ValueError, match="cannot start"):
            await pool.run_batch(runtime, ["refuse"])
        failing = asyncio.ensure_future(pool.run_batch(runtime, ["fail"]))
        await asyncio.to_thread(runtime.wait_started, 1)
        runtime.finish(0)
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            await failing
        ok = asyncio.ensure_future(pool.run_batch(runtime, [np.zeros(1)]))
        await asyncio.to_thread(runtime.wait_started, 1)
        runtime.finish(1)
        assert (await ok).shape == (1, 2)
        await _until(lambda: pool.batches_running == 0, "no batch running")
        pool.shutdown()

    asyncio.run(scenario())


def test_shutdown_waits_for_running_batches() -> None:
    """No onnxruntime thread may call back into an interpreter that is exiting: shutdown returns
    only once every started batch has called back, even one whose caller was cancelled."""
    pool = InferencePool(1)
    runtime = ControlledRuntime()
    loop = asyncio.new_event_loop()
    try:
        run = loop.create_task(pool.run_batch(runtime, [np.zeros(1)]))
        loop.run_until_complete(asyncio.sleep(0))
        runtime.wait_started(1)
        run.cancel()
        loop.run_until_complete(asyncio.gather(run, return_exceptions=True))
        shut = threading.Thread(target=pool.shutdown)
        shut.start()
        shut.join(0.2)
        assert shut.is_alive(), "shutdown returned while onnxruntime was still computing"
        runtime.finish(0)
        shut.join(10)
        assert not shut.is_alive() and pool.batches_running == 0
    finally:
        loop.close()


def test_without_run_async_batches_run_on_the_inference_threads(bundles, monkeypatch, caplog) -> None:
    """A provider that cannot run the batch session asynchronously (RunAsync fails at the load
    probe) is not a refused bundle: the runtime logs it and its batches run on the pool's threads,
    with the same answers and the same slots."""
    def refuse(*_args, **_kwargs):
        raise RuntimeError("RunAsync is not supported here")

    monkeypatch.setattr(ort.InferenceSession, "run_async", refuse)
    path = bundles[1].path
    runtime = ModelRuntime.load(path, verify_bundle(path), providers=[CPU_PROVIDER], intra_op_threads=1,
                                batching=True)
    assert not runtime.runs_async
    assert "cannot run batches asynchronously" in caplog.text
    rows = [np.array([3, 4, 5], dtype=np.int64), np.array([6], dtype=np.int64)]
    threads: list[str] = []
    real_run = runtime.run

    def run(batch):
        threads.append(threading.current_thread().name)
        return real_run(batch)

    runtime.run = run

    async def scenario() -> np.ndarray:
        pool = InferencePool(1)
        try:
            return await pool.run_batch(runtime, rows)
        finally:
            pool.shutdown()

    np.testing.assert_allclose(asyncio.run(scenario()), real_run(rows), atol=0, rtol=0)
    assert len(threads) == 1 and threads[0].startswith("inference")


def test_a_runtime_outlives_its_batch_and_is_freed_on_the_event_loop(monkeypatch) -> None:
    """A version retired while its batch computes: the pool keeps its runtime (and so its
    onnxruntime session) while the batch runs and for a while after onnxruntime called back, and the
    last reference goes on the event loop, never on onnxruntime's thread (a session freed from its
    own pool thread would join that thread from itself)."""
    monkeypatch.setattr(inference_pool, "KEEP_ALIVE_AFTER_RUN_S", 0.05)
    freed_on: list[str] = []

    class Retired(ControlledRuntime):
        def __del__(self) -> None:
            freed_on.append(threading.current_thread().name)

    async def scenario() -> None:
        pool = InferencePool(1)
        runtime = Retired()
        run = asyncio.ensure_future(pool.run_batch(runtime, [np.zeros(1)]))
        await asyncio.to_thread(runtime.wait_started, 1)
        release = runtime.finish_events[0]
        alive = weakref.ref(runtime)
        del runtime
        gc.collect()
        assert alive() is not None, "freed while onnxruntime computes its batch"
        release.set()
        await run
        gc.collect()
        assert alive() is not None, "freed right after the callback"
        await _until(lambda: alive() is None, "the runtime freed after the keep-alive")
        assert freed_on == [threading.current_thread().name]
        pool.shutdown()

    asyncio.run(scenario())
