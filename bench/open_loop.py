"""Load helpers shared by bench/bench_overload.py and bench/soak.py (reusable by any benchmark).

* ``measure_capacity``: closed-loop throughput (reuses ``bench/serving_load.closed_loop`` and its
  callers, so the requests are the serving benchmark's own);
* ``open_loop``: a fixed arrival rate (calls start on schedule whether or not earlier ones have
  answered, as independent users do), for a bounded time; every call's schedule time, latency and
  status code are recorded.

The server is a separate ``python -m service`` process (``bench/serving_support.start_server``).
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_load import Caller, WorkerSpec, closed_loop, kserve_caller, textclf_caller  # noqa: E402
from serving_support import percentile  # noqa: E402

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


@dataclass
class CallRecord:
    scheduled: float  # monotonic time the call was due
    started: float  # monotonic time it was sent (> scheduled when the client lagged)
    latency_s: float
    code: str  # grpc status name


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    calls: list[CallRecord] = field(default_factory=list)
    skipped: int = 0  # due calls not sent because ``max_outstanding`` were already waiting
    details: dict[str, str] = field(default_factory=dict)  # the first error message seen per status code

    def codes(self) -> Counter[str]:
        return Counter(c.code for c in self.calls)

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        ok = [c.latency_s * 1e3 for c in self.calls if c.code == "OK"]
        rejected = [c.latency_s * 1e3 for c in self.calls if c.code == "RESOURCE_EXHAUSTED"]
        lag = [(c.started - c.scheduled) * 1e3 for c in self.calls]
        sent = len(self.calls)
        return {
            "offered_per_s": self.rate, "sent": sent, "sent_per_s": sent / self.seconds, "skipped": self.skipped,
            "codes": dict(self.codes()), "ok_per_s": len(ok) / self.seconds,
            "rejected_fraction": len(rejected) / sent if sent else float("nan"),
            "other_errors": sent - len(ok) - len(rejected),
            "ok_p50_ms": percentile(ok, 50), "ok_p99_ms": percentile(ok, 99), "ok_max_ms": max(ok, default=float("nan")),
            "rejected_p50_ms": percentile(rejected, 50), "rejected_p99_ms": percentile(rejected, 99),
            "client_lag_p99_ms": percentile(lag, 99), "error_details": dict(self.details),
        }


def make_caller(channel: grpc.aio.Channel, api: str, address: str, model: str, texts: list[str]) -> Caller:
    spec = WorkerSpec(address=address, api=api, model=model, texts=texts, concurrency=1, seconds=0)
    call, _close = (textclf_caller if api == "textclf" else kserve_caller)(channel, spec)  # nothing to close
    return call


async def measure_capacity(channel: grpc.aio.Channel, api: str, address: str, model: str, texts: list[str], *,
                           concurrency: int, seconds: float, warmup: float = 1.0) -> dict[str, float]:
    """Closed loop: ``concurrency`` callers, each sending as soon as its previous answer came."""
    call = make_caller(channel, api, address, model, texts)
    spec = WorkerSpec(address=address, api=api, model=model, texts=texts, concurrency=concurrency, seconds=seconds)
    result = await closed_loop(call, spec, time.monotonic() + warmup)
    done = len(result.latencies_ms)
    return {"concurrency": concurrency, "seconds": seconds, "ok": done, "per_s": done / seconds,
            "errors": sum(result.errors.values()), "p50_ms": percentile(result.latencies_ms, 50),
            "p99_ms": percentile(result.latencies_ms, 99)}


async def open_loop(call: Caller, rate: float, seconds: float, *, max_outstanding: int = 4096,
                    on_call=None) -> OpenLoopResult:
    """Start call ``i`` at ``t0 + i / rate`` for ``seconds``; wait for the stragglers; record all.

    ``on_call(record)`` (optional) sees every finished call (e.g. for a time series)."""
    result = OpenLoopResult(rate=rate, seconds=seconds)
    outstanding: set[asyncio.Task] = set()
    t0 = time.monotonic() + 0.05

    async def one(i: int, due: float) -> None:
        started = time.monotonic()
        try:
            await call(i)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            result.details.setdefault(code, exc.details() or "")
        except Exception as exc:  # noqa: BLE001 - anything else is an error of its own kind
            code = type(exc).__name__
        record = CallRecord(due, started, time.monotonic() - started, code)
        result.calls.append(record)
        if on_call is not None:
            on_call(record)

    i = 0
    total = int(rate * seconds)
    while i < total:
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the arrivals, not synchronising
        # send every call that is due now (the loop may have woken late)
        now = time.monotonic()
        while i < total and t0 + i / rate <= now:
            if len(outstanding) >= max_outstanding:
                result.skipped += 1
            else:
                task = asyncio.ensure_future(one(i, t0 + i / rate))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
            i += 1
    if outstanding:
        await asyncio.gather(*outstanding)
    return result
