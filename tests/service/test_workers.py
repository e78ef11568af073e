"""Multi-worker serving (``python -m service --workers 2``): one port, one metrics endpoint, drain, restart.

Real supervisor and worker processes, real gRPC clients. SO_REUSEPORT spreads *connections* over the
workers, so each test channel has its own connection (``grpc.use_local_subchannel_pool``) and a
probe call tells which worker it reached (``textclf_worker_requests_total{worker}``).
"""
from __future__ import annotations

import json
import os
import re
import signal

import grpc

from client.client import TextclfClient
from tests.support.api_stubs import own_connection
from tests.support.metrics import metric, scrape, wait_until
from tests.support.service_process import FINAL_COUNTS
from tests.support.workers import Workers, alive, start_workers  # noqa: F401 - start_workers is a fixture
from textclf_protos.textclf.v1 import textclf_pb2, textclf_pb2_grpc


def _request(text: str = "the market rallied") -> textclf_pb2.ClassifyRequest:
    return textclf_pb2.ClassifyRequest(model="news", texts=[text])


def channels_per_worker(server: Workers, workers: int = 2, attempts: int = 64) -> dict[str, grpc.Channel]:
    """One channel (connection) pinned to each worker, found by probe calls."""
    found: dict[str, grpc.Channel] = {}
    for _ in range(attempts):
        channel = own_connection(server.address)
        before = server.worker_counts()
        textclf_pb2_grpc.TextClassifierStub(channel).Classify(_request(), timeout=10)
        after = server.worker_counts()
        moved = [w for w, n in after.items() if n > before.get(w, 0)]
        assert len(moved) == 1, (before, after)
        if moved[0] in found:
            channel.close()
        else:
            found[moved[0]] = channel
        if len(found) == workers:
            return found
    raise AssertionError(f"{attempts} connections all reached workers {sorted(found)}")


def test_two_workers_serve_one_port_with_one_metrics_endpoint(bundles, start_workers) -> None:
    server = start_workers()
    assert len(server.worker_pids()) == 2
    channels = channels_per_worker(server)  # both workers answered calls on the one port
    for channel in channels.values():
        channel.close()
    with TextclfClient(server.address, retry=False) as client:
        assert client.classify(["the striker scored"], "news").version == 2
    samples = scrape(server.metrics_url)
    calls = sum(server.worker_counts().values())
    assert calls >= 3
    assert metric(samples, "textclf_requests_total", api="textclf.v1.Classify", code="OK") == calls
    assert metric(samples, "textclf_texts_total", model="news", version="2") == calls
    # gauges combine sensibly: a version loaded in both workers is 1, not 2; nothing queued
    assert metric(samples, "textclf_model_loaded", model="news", version="2") == 1
    assert metric(samples, "textclf_model_default_version", model="news") == 2
    assert metric(samples, "textclf_queue_depth") == 0
    assert metric(samples, "textclf_calls_in_flight") == 0


def test_sigterm_drains_every_worker_without_losing_an_admitted_call(bundles, start_workers) -> None:
    # texts wait up to 2 s for batch-mates: the calls are admitted and queued in both workers at SIGTERM
    server = start_workers("--max-queue-delay-ms", "2000")
    channels = channels_per_worker(server)
    probes = sum(server.worker_counts().values())
    futures = [textclf_pb2_grpc.TextClassifierStub(channel).Classify.future(_request(f"text {k}"), timeout=20)
               for channel in channels.values() for k in range(4)]
    wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 8, what="8 texts queued")
    pids = server.worker_pids()
    server.process.send_signal(signal.SIGTERM)
    answers = [future.result(timeout=20) for future in futures]
    assert [len(a.predictions) for a in answers] == [1] * 8
    assert server.process.wait(20) == 0
    final = server.wait_line(FINAL_COUNTS)
    assert json.loads(final.group(1)) == {"textclf.v1.Classify": {"OK": int(probes) + 8}}
    assert server.log.count("request counts of this worker") == 2
    assert not any(alive(pid) for pid in pids.values())
    for channel in channels.values():
        channel.close()


def test_a_killed_worker_is_replaced(bundles, start_workers) -> None:
    server = start_workers()
    old = server.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    replaced = server.wait_line(re.compile(rf"worker 0 ready: pid (\d+)"))
    new_pid = int(replaced.group(1))
    assert new_pid != old[0] and alive(new_pid) and alive(old[1])
    assert "worker 0 (pid %d) exited unexpectedly" % old[0] in server.log
    channels = channels_per_worker(server)  # both slots serve again
    for channel in channels.values():
        channel.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
