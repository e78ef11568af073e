"""Hooks that make unlucky timing deterministic in an in-process server (``ServerThread``): hold
a blocking call until the test releases it, or make the batcher fail once."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np


def hold_inference(server: Any, model: str = "news") -> tuple[threading.Event, threading.Event]:
    """Hook on the default version's runtime: a batch taken to compute sets ``entered`` and waits
    for ``release`` (its texts no longer count as queued). Batches (``run_async``) wait on a thread
    of their own, as onnxruntime's would; a blocking ``run`` (batching off) waits where it is called."""
    runtime = server.app.core.get_model(model).runtime
    entered, release = threading.Event(), threading.Event()
    real_run, real_run_async = runtime.run, runtime.run_async

    def held(rows):
        entered.set()
        release.wait(20)
        return real_run(rows)

    def held_async(rows, done):
        entered.set()
        threading.Thread(target=lambda: (release.wait(20), real_run_async(rows, done)), daemon=True).start()

    runtime.run, runtime.run_async = held, held_async
    return entered, release


class _HeldBatch:
    """Stands in for a runtime in ``InferencePool.run_batch``: its batch ends when released."""

    runs_async = True

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered, self.release = entered, release

    def run_async(self, rows, done) -> None:
        self.entered.set()
        threading.Thread(target=lambda: (self.release.wait(30), done(np.zeros((0, 1), np.float32), None)),
                         daemon=True).start()


def hold_inference_pool(server: Any) -> tuple[threading.Event, threading.Event]:
    """Take the server's one inference slot (``inference_workers`` 1) with a batch of nothing that
    ends on ``release``: every batch of every model waits for a slot meanwhile."""
    entered, release = threading.Event(), threading.Event()
    asyncio.run_coroutine_threadsafe(server.app.inference.run_batch(_HeldBatch(entered, release), []), server.loop)
    return entered, release


def hold_pool_tokenizer(encoder: Any) -> tuple[threading.Event, threading.Event]:
    """Hook on a loaded version's real encoder: a call from a tokenizer-pool thread sets
    ``entered`` and waits for ``release`` (texts tokenized on the event loop pass)."""
    entered, release = threading.Event(), threading.Event()
    real = encoder.token_ids

    def held(texts):
        if threading.current_thread().name.startswith("tokenize"):
            entered.set()
            release.wait(20)
        return real(texts)

    encoder.token_ids = held
    return entered, release


def gate(target: object, name: str) -> tuple[threading.Event, threading.Event]:
    """Replace ``target.name`` (a blocking call run in a worker thread) with one that signals
    ``entered`` and then waits for ``release``."""
    original = getattr(target, name)
    entered, release = threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        entered.set()
        assert release.wait(30), "test never released the gate"
        return original(*args, **kwargs)

    setattr(target, name, gated)
    return entered, release



def hold_batch_forming(scheduler) -> threading.Event:
    """Hook on a DynamicBatcher: it waits for the returned ``release`` before it takes its next
    batch, so queued texts stay queued (the queue stays full) for as long as the test needs."""
    release = threading.Event()
    real = scheduler._wait_for_batch

    async def held() -> None:
        await asyncio.to_thread(release.wait, 30)
        await real()

    scheduler._wait_for_batch = held
    return release


def fail_next_batch(scheduler) -> None:
    """Make the batcher loop of ``scheduler`` (a DynamicBatcher) raise once, deterministically."""
    original = scheduler._take_batch
    failures = [RuntimeError("injected batcher failure")]

    def take_batch_failing_once():
        if failures:
            raise failures.pop()
        return original()

    scheduler._take_batch = take_batch_failing_once
