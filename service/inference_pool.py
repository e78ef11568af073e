"""Where onnxruntime computes: ``inference_workers`` slots shared by every loaded model version.

With batching on, a batch is handed from the event loop to onnxruntime's RunAsync
(``ModelRuntime.run_async``; on the thread pool below for a runtime whose provider could not run
asynchronously at load) and holds a slot until onnxruntime has finished it, also when the
caller gave up meanwhile, so at most ``inference_workers`` batches compute at once, whichever models
they belong to. With batching off, each request's job (tokenize and compute) runs on a thread pool
of ``inference_workers`` threads. ``shutdown`` waits for both, so no onnxruntime thread calls back
into an interpreter that is exiting.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import numpy as np

from service.runtime import BatchDone, ModelRuntime, deliver

logger = logging.getLogger(__name__)

# How long a runtime is kept after its batch's callback: onnxruntime's thread ends the run within
# microseconds of calling back, so this is a wide margin, and it delays only the freeing of a
# retired version's memory.
KEEP_ALIVE_AFTER_RUN_S = 1.0


class InferencePool:
    def __init__(self, workers: int) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="inference")
        self._slots = asyncio.Semaphore(workers)  # bound to the event loop that first waits on it
        self._running = 0  # batches started in onnxruntime and not yet called back
        self._keep_alive: list[ModelRuntime] = []  # runtimes of batches running or just finished
        self._changed = threading.Condition()

    @property
    def batches_running(self) -> int:
        return self._running

    async def run_batch(self, runtime: ModelRuntime, rows: list[np.ndarray]) -> np.ndarray:
        """Compute one padded batch of ``rows`` with ``runtime``: probabilities (B, C)."""
        loop = asyncio.get_running_loop()
        slots = self._slots
        await slots.acquire()
        future: asyncio.Future[np.ndarray] = loop.create_future()

        def settle(probabilities: np.ndarray | None, error: Exception | None) -> None:  # event loop
            slots.release()
            # onnxruntime's thread may still be finishing this run (freeing its tensors) when this
            # runs: keep the runtime, and with it the session, a while longer, so a version
            # retired meanwhile is never freed under that thread, and the last reference is
            # dropped here on the event loop
            loop.call_later(KEEP_ALIVE_AFTER_RUN_S, self._keep_alive.remove, runtime)
            if future.done():  # the caller was cancelled: nobody waits for this batch any more
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(probabilities)

        def done(probabilities: np.ndarray | None, error: Exception | None) -> None:  # onnxruntime's thread
            try:
                loop.call_soon_threadsafe(settle, probabilities, error)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass
            finally:
                self._count(-1)

        self._count(1)
        self._keep_alive.append(runtime)
        try:
            self._start(runtime, rows, done)
        except BaseException:
            self._count(-1)
            self._keep_alive.remove(runtime)
            slots.release()
            raise
        return await future

    def _start(self, runtime: ModelRuntime, rows: list[np.ndarray], done: BatchDone) -> None:
        """RunAsync where the runtime has a batch session; otherwise (onnxruntime could not run
        the batch session asynchronously at load) the batch runs on the thread pool, the way
        every batch ran before RunAsync, with the same slot and callback."""
        if runtime.runs_async:
            runtime.run_async(rows, done)
            return
        self.executor.submit(deliver, done, lambda: runtime.run(rows))

    def _count(self, delta: int) -> None:
        with self._changed:
            self._running += delta
            self._changed.notify_all()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Wait for the thread pool's jobs and for every batch onnxruntime is computing."""
        self.executor.shutdown(wait=True)
        with self._changed:
            if not self._changed.wait_for(lambda: self._running == 0, timeout):
                logger.warning("%d onnxruntime batch(es) still running after %.0f s", self._running, timeout)
