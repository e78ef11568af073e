"""Cumulative per-version statistics for the KServe ``ModelStatistics`` RPC (Triton's
statistics extension), counted by the KServe servicer for the requests it answered.

Prometheus (service/metrics.py) is the service-wide source of truth; this is the subset a KServe
client can ask for in-band. Mapping: ``inference_count`` = texts classified, ``execution_count``
= successful requests (batches are formed below this layer; their sizes are in Prometheus),
``inference_stats.success``/``fail`` = request count and total nanoseconds.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from textclf_protos.inference import grpc_service_pb2 as pb


@dataclass
class _Tally:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    texts: int = 0
    last_inference_ms: int = 0


class InferenceStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, int], _Tally] = {}

    def _tally(self, name: str, version: int) -> _Tally:
        return self._tallies.setdefault((name, version), _Tally())

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

    def message(self, name: str, version: int) -> pb.ModelStatistics:
        with self._lock:
            tally = _Tally(**vars(self._tallies.get((name, version), _Tally())))
        duration = pb.StatisticDuration
        return pb.ModelStatistics(
            name=name, version=str(version), last_inference=tally.last_inference_ms,
            inference_count=tally.texts, execution_count=tally.success_count,
            inference_stats=pb.InferStatistics(success=duration(count=tally.success_count, ns=tally.success_ns),
                                               fail=duration(count=tally.fail_count, ns=tally.fail_ns)))
