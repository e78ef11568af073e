"""Drain with open streams (issue 9, item 5).

* SIGTERM with open streams that never close on their own (both APIs, our client and
  tritonclient, one of them idle from the start): every stream gets the answer of the message it
  had in flight, then ends with UNAVAILABLE "server is shutting down" right away; the process
  exits long before the grace period.
* SIGTERM with a client that stopped reading (bare HTTP/2 frames: it never closes its stream and
  never answers the PING of gRPC's graceful GOAWAY): the process still exits a second or two after
  the drain. gRPC's own stop would wait the whole grace period for that client; a fresh
  process's grpcio client was slow in the same way (3.5 s per stream here).
* In process, ``App.stop`` with an open idle stream returns at once.

Connection lifetime limits (the other half of item 5): test_connection_limits.py.
"""
from __future__ import annotations

import json
import logging
import queue
import signal
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from client.client import TextclfClient, classify_request
from service.api.boundary import STREAM_DRAINED
from tests.support.metrics import metric, scrape, wait_until
from tests.support.raw_h2 import StubbornStream
from tests.support.service_process import FINAL_COUNTS, ServiceProcess
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

GRACE = 60.0


def _text_input(text: str) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def test_sigterm_ends_open_streams_promptly_after_their_answers(bundles, repo_path) -> None:
    # texts wait up to 1.5 s for batch-mates, so a message is reliably in flight at the signal
    server = ServiceProcess(repo_path, "--max-queue-delay-ms", "1500", "--grace-period", str(GRACE))
    outbox: queue.Queue = queue.Queue()
    idle_outbox: queue.Queue = queue.Queue()
    kserve_answers: queue.Queue = queue.Queue()
    client = TextclfClient(server.address, retry=False, timeout=GRACE + 30)
    kserve = triton.InferenceServerClient(server.address)
    channel = grpc.insecure_channel(server.address)
    try:
        # textclf ClassifyStream through our client: the request iterator never ends on its own
        textclf_answers = client.classify_stream(iter(outbox.get, None))
        outbox.put(("1", classify_request(["the market rallied"], "news")))
        assert next(textclf_answers).ok
        # KServe ModelStreamInfer through tritonclient
        kserve.start_stream(callback=lambda result, error: kserve_answers.put((result, error)))
        kserve.async_stream_infer("news", [_text_input("the market rallied")], request_id="k1")
        result, error = kserve_answers.get(timeout=30)
        assert error is None and result.get_response().id == "k1"
        # a ClassifyStream that never sends anything
        idle = pb_grpc.TextClassifierStub(channel).ClassifyStream(iter(idle_outbox.get, None), timeout=GRACE + 30)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_calls_in_flight") == 3, what="3 open streams")

        # one message of each busy stream in flight, then SIGTERM
        outbox.put(("2", classify_request(["the striker scored"], "news")))
        kserve.async_stream_infer("news", [_text_input("the striker scored")], request_id="k2")
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 2, what="2 texts in flight")
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        second = next(textclf_answers)
        assert second.id == "2" and second.ok, second  # the in-flight answer is delivered
        with pytest.raises(grpc.RpcError) as textclf_end:
            next(textclf_answers)
        result, error = kserve_answers.get(timeout=30)
        assert error is None and result.get_response().id == "k2"
        result, error = kserve_answers.get(timeout=30)
        assert result is None and error is not None
        with pytest.raises(grpc.RpcError) as idle_end:
            next(idle)
        assert server.wait(timeout=GRACE / 4) == 0
        shutdown_seconds = time.monotonic() - sigterm_at
    finally:
        outbox.put(None)
        idle_outbox.put(None)
        kserve.stop_stream()
        kserve.close()
        client.close()
        channel.close()
        server.kill()

    for end in (textclf_end.value, idle_end.value):
        assert end.code() == grpc.StatusCode.UNAVAILABLE and end.details() == STREAM_DRAINED, end
    assert error.status() == "StatusCode.UNAVAILABLE" and STREAM_DRAINED in error.message(), error
    # 1.5 s batch delay + 0.5 s drain delay + start-up of the exit; the grace period is 60 s
    logging.getLogger(__name__).info("SIGTERM to exit with 3 open streams: %.2f s (grace %.0f s)", shutdown_seconds,
                                     GRACE)
    assert shutdown_seconds < 10, f"shutdown took {shutdown_seconds:.1f} s"
    final = json.loads(server.wait_line(FINAL_COUNTS).group(1))
    assert final["textclf.v1.ClassifyStream"] == {"UNAVAILABLE": 2}, final
    assert final["kserve.ModelStreamInfer"] == {"UNAVAILABLE": 1}, final
    assert final["textclf.v1.ClassifyStream.message"] == {"OK": 2}, final
    assert final["kserve.ModelStreamInfer.message"] == {"OK": 2}, final


def test_sigterm_exits_promptly_when_a_client_stops_reading(bundles, repo_path) -> None:
    server = ServiceProcess(repo_path, "--grace-period", str(GRACE))
    stubborn = StubbornStream(server.address, "/textclf.v1.TextClassifier/ClassifyStream", answer_pings=False)
    try:
        stubborn.send(pb.ClassifyStreamRequest(id="a", request=classify_request(["the market"], "news"))
                      .SerializeToString())
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_requests_total",
                                  api="textclf.v1.ClassifyStream.message", code="OK") == 1, what="the message answered")
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert stubborn.server_ended_call.wait(10), "the server did not end the stream"
        assert server.wait(timeout=GRACE / 4) == 0  # without the cut after the drain: the whole grace period
        shutdown_seconds = time.monotonic() - sigterm_at
    finally:
        stubborn.close()
        server.kill()
    assert shutdown_seconds < 5, f"shutdown took {shutdown_seconds:.1f} s"
    final = json.loads(server.wait_line(FINAL_COUNTS).group(1))
    assert final["textclf.v1.ClassifyStream"] == {"UNAVAILABLE": 1}, final
    assert final["textclf.v1.ClassifyStream.message"] == {"OK": 1}, final


def test_app_stop_with_an_idle_open_stream_returns_at_once(bundles, start_server) -> None:
    """In-process variant, no signal: ``App.stop`` with an open idle ClassifyStream returns at once
    (not after the grace period) and the stream ends UNAVAILABLE."""
    server = start_server(grace_period=30.0)
    outbox: queue.Queue = queue.Queue()
    with grpc.insecure_channel(server.address) as channel:
        answers = pb_grpc.TextClassifierStub(channel).ClassifyStream(iter(outbox.get, None), timeout=60)
        outbox.put(pb.ClassifyStreamRequest(id="a", request=classify_request(["the market"], "news")))
        assert next(answers).id == "a"
        start = time.monotonic()
        server.call(server.app.stop(30.0), timeout=40)
        server.app = None  # stopped: the fixture must not stop it again
        stopped_after = time.monotonic() - start
        with pytest.raises(grpc.RpcError) as end:
            next(answers)
        outbox.put(None)
    assert end.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopped_after < 5, f"stop took {stopped_after:.1f} s with a 30 s grace period"
