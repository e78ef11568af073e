"""The event loop the server runs on: asyncio's selector loop, with a selector that may poll
without blocking for a short while after activity (``idle_spin_us``).

Why: a lone caller (c=1) sends its next request a fraction of a millisecond after its answer.
A loop that blocks in ``epoll_wait`` meanwhile lets its core go idle, and waking it costs the
next call the wake-up and a cold model: onnxruntime's run for one short text took 0.24-0.31 ms
in the server against 0.11-0.14 ms back to back (docs/benchmarks.md "Session 15"). Polling for up
to ``idle_spin_us`` after the last event keeps the core awake for that caller.

Each poll first yields the core (``sched_yield``): gRPC's poller thread, which hands the next
request to the loop, runs at once instead of waiting for the scheduler to preempt the poll
(without it a c=1 p99 doubled in 3 of 5 repetitions on two cores).

It polls only while ``may_spin()`` says so (the server: no call being handled, i.e. between a lone
caller's calls). While calls are being handled the loop blocks as before, so a busy server, whose
loop waits on onnxruntime's batches, never takes CPU from them. The cost is CPU on an otherwise idle
core: at most ``idle_spin_us`` after each burst of activity, reported to ``on_spin``
(``textclf_event_loop_spin_seconds_total``); 0 turns it off. At a few hundred sparse calls a second
that is most of a core (bench/idle_spin_cost.py), which is why the deployments set 0.
"""
from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable


class SpinningSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, spin_seconds: float, may_spin: Callable[[], bool] = lambda: False,
                 on_spin: Callable[[float], None] = lambda seconds: None) -> None:
        super().__init__()
        self.spin_seconds = spin_seconds
        # the server installs both once its core and metrics exist
        self.may_spin = may_spin
        self.on_spin = on_spin  # told the seconds of each spell of polling
        self._last_event = float("-inf")

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.spin_seconds <= 0:
            return super().select(timeout)
        if timeout == 0:
            return self._selected(super().select(0))
        start = time.monotonic()
        end = self._last_event + self.spin_seconds
        if start < end and self.may_spin():
            if timeout is not None:
                end = min(end, start + timeout)
            now = start
            while now < end:
                os.sched_yield()  # a thread that has work on this core (gRPC's poller) runs first
                ready = super().select(0)
                now = time.monotonic()
                if ready:
                    self.on_spin(now - start)
                    self._last_event = now
                    return ready
            self.on_spin(now - start)
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        return self._selected(super().select(timeout))

    def _selected(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[tuple[selectors.SelectorKey, int]]:
        if ready:
            self._last_event = time.monotonic()
        return ready


def new_event_loop(selector: SpinningSelector) -> asyncio.AbstractEventLoop:
    """asyncio's default loop on Linux (a selector loop on epoll), with ``selector``."""
    return asyncio.SelectorEventLoop(selector)
