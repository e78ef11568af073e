"""Cumulative per-version inference statistics, kept by the core for every API (textclf.v1 and
KServe alike) and answered in-band by the KServe ``ModelStatistics`` RPC (Triton's statistics
extension; service/api/kserve_stats.py).

Prometheus (service/metrics.py) is the service-wide source of truth; this is the subset a client
can ask for in-band. Per (model, version): successful requests with their total time and texts,
failed requests (after the model was resolved) with their total time, last success time.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass


@dataclass
class Tally:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    texts: int = 0
    last_inference_ms: int = 0


class InferenceStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, int], Tally] = {}

    def _tally(self, name: str, version: int) -> Tally:
        return self._tallies.setdefault((name, version), Tally())

    def success(self, name: str, version: int, texts: int, seconds: float) -> None:
        with self._lock:
            tally = self._tally(name, version)
            tally.success_count += 1
            tally.success_ns += int(seconds * 1e9)
            tally.texts += texts
            tally.last_inference_ms = int(time.time() * 1000)

    def failure(self, name: str, version: int, seconds: float) -> None:
        with self._lock:
            tally = self._tally(name, version)
            tally.fail_count += 1
            tally.fail_ns += int(seconds * 1e9)

    def snapshot(self, name: str, version: int) -> Tally:
        """A copy of the version's tally (all zero when it never answered)."""
        with self._lock:
            return dataclasses.replace(self._tallies.get((name, version), Tally()))
