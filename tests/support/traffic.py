"""Bounded client traffic for the deployment tests, and deadline-bounded polling.

``Traffic`` runs closed-loop Classify calls from a few threads through one ``call`` (a gRPC
channel is thread-safe) and counts every outcome by status name, so a test can kill or drain a
server mid-traffic and then assert that no call was lost.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             alive: Callable[[], None] | None = None) -> Any:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes (then fail).
    ``alive`` is called first on every round (to fail at once when a process died)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled conditions fail until they pass
            last_error = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")
        threading.Event().wait(interval)  # poll pacing, not synchronisation


@dataclass
class Traffic:
    """``call(texts)`` returns how many predictions came back; anything but ``len(texts)`` counts
    as WRONG_ANSWER, a grpc.RpcError as its status name. Call ``i`` of a thread sends
    ``1 + i % max_texts`` texts."""

    call: Callable[[list[str]], int]
    texts: Sequence[str]
    threads: int = 4
    max_texts: int = 1
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    @property
    def completed(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())

    def _run(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            texts = [self.texts[(worker + i) % len(self.texts)]] * (1 + i % self.max_texts)
            i += 1
            try:
                outcome = "OK" if self.call(texts) == len(texts) else "WRONG_ANSWER"
            except grpc.RpcError as exc:
                outcome = exc.code().name
                with self._lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {outcome}: {exc.details()}")
            with self._lock:
                self.outcomes[outcome] += 1

    def start(self) -> None:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._run, args=(worker,), name=f"traffic-{worker}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def wait_more(self, calls: int, what: str, timeout: float = 30.0) -> None:
        """Wait until ``calls`` more calls have completed (progress, whatever the outcome)."""
        target = self.completed + calls
        wait_for(lambda: self.completed >= target, timeout, f"{calls} more client calls {what}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)
