"""Deeper call intake (service/intake.py) and the process-wide call limit that covers it
(service/call_limit.py), through real servers and real clients."""
from __future__ import annotations

import logging
import queue
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.client import TextclfClient
from service import intake as intake_module
from tests.support.hooks import hold_inference
from tests.support.metrics import metric, scrape, wait_until
from tests.support.server_thread import ServerThread
from textclf_protos.inference import grpc_service_pb2 as kpb, grpc_service_pb2_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc

TEXTS = ["the striker scored twice", "shares fell on the stock market", "a new phone chip", "the election result"]


def _kserve_request(text: str) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1]).contents.bytes_contents.append(text.encode())
    return request


def _stream_request(text: str, i: int) -> pb.ClassifyStreamRequest:
    return pb.ClassifyStreamRequest(id=str(i), request=pb.ClassifyRequest(model="news", texts=[text]))


def test_deeper_intake_takes_calls_and_they_are_answered_like_the_others(start_server, bundles) -> None:
    plain = start_server(grpc_intake_depth=1)
    deep = start_server(grpc_intake_depth=4)
    assert not plain.app.intake.running and deep.app.intake.running
    answers = {}
    for server in (plain, deep):
        with TextclfClient(server.address, retry=False, timeout=10) as client:
            unary = [client.classify([t], "news").predictions[0].label for t in TEXTS * 3]
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
            infer = [kserve.ModelInfer(_kserve_request(t), timeout=10).outputs[0].name for t in TEXTS]
            streamed = [r.response.predictions[0].label for r in pb_grpc.TextClassifierStub(client.channel)
                        .ClassifyStream(iter([_stream_request(t, i) for i, t in enumerate(TEXTS)]), timeout=10)]
        answers[server] = (unary, infer, streamed)
    assert answers[plain] == answers[deep]
    assert plain.app.intake.calls_taken == 0
    # gRPC core hands a method's waiting call requests out in turn: most calls came through the extra ones
    assert deep.app.intake.calls_taken >= len(TEXTS) * 3 // 2


def test_intake_falls_back_to_grpcio_when_its_internals_are_missing(start_server, bundles, monkeypatch,
                                                                    caplog) -> None:
    monkeypatch.setattr(intake_module, "_INTERNALS_PRESENT", False)
    with caplog.at_level(logging.WARNING, logger="service.intake"):
        server = start_server(grpc_intake_depth=4)
    assert not server.app.intake.running
    assert "grpc_intake_depth 4 not used" in caplog.text
    with TextclfClient(server.address, retry=False, timeout=10) as client:
        assert client.classify(TEXTS, "news").predictions


def test_stopping_ends_the_extra_intake_without_errors(make_settings, bundles, caplog) -> None:
    server = ServerThread(make_settings(grpc_intake_depth=4)).start()
    with TextclfClient(server.address, retry=False, timeout=10) as client:
        client.classify(TEXTS, "news")
    tasks = list(server.app.intake._tasks)
    assert tasks
    with caplog.at_level(logging.WARNING):
        server.stop()
    assert all(task.done() and not task.cancelled() and task.exception() is None for task in tasks)
    assert "intake" not in caplog.text


def _open_stream(channel: grpc.Channel) -> tuple[queue.Queue, object]:
    """A ClassifyStream that stays open: one request answered, then idle until ``None`` is put."""
    outbox: queue.Queue = queue.Queue()
    outbox.put(_stream_request("held open", 0))
    responses = pb_grpc.TextClassifierStub(channel).ClassifyStream(iter(outbox.get, None), timeout=30)
    return outbox, responses


@pytest.mark.parametrize("depth", [1, 4])
def test_max_concurrent_rpcs_counts_calls_from_every_intake(start_server, bundles, depth: int) -> None:
    limit = 3
    server = start_server(grpc_intake_depth=depth, max_concurrent_rpcs=limit)
    with grpc.insecure_channel(server.address) as channel:
        streams, refused = [], []
        for _ in range(2 * limit):  # one at a time: each is either answered (and held open) or refused
            outbox, responses = _open_stream(channel)
            try:
                assert next(responses).response.predictions[0].label
                streams.append((outbox, responses))
            except grpc.RpcError as error:
                refused.append(error)
        assert len(streams) == limit
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "max_concurrent_rpcs" in refused[0].details()
        # unary calls, both APIs, refused while the limit is taken; the largest valid message too
        stub = pb_grpc.TextClassifierStub(channel)
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # and every other service of the server: health (unary and its response stream)
        health = health_pb2_grpc.HealthStub(channel)
        for call in (lambda: stub.Classify(pb.ClassifyRequest(model="news", texts=["x " * 30000] * 64), timeout=10),
                     lambda: kserve.ModelInfer(_kserve_request("x"), timeout=10),
                     lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
                     lambda: next(health.Watch(health_pb2.HealthCheckRequest(), timeout=10))):
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_calls_refused_total", reason="max_concurrent_rpcs") == limit + 4
        # refused calls never reached a servicer (their requests were not read)
        assert metric(samples, "textclf_requests_total", api="textclf.v1.Classify") == 0
        assert metric(samples, "textclf_requests_total", api="inference.ModelInfer") == 0
        # a closed stream frees its place
        outbox, responses = streams.pop()
        outbox.put(None)
        assert list(responses) == []
        wait_until(lambda: _active(server) == limit - 1, what="the closed stream's place freed")
        assert stub.Classify(pb.ClassifyRequest(model="news", texts=["back"]), timeout=10).predictions
        for outbox, responses in streams:
            outbox.put(None)
            assert list(responses) == []
        wait_until(lambda: _active(server) == 0, what="every place freed")
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)  # an open health stream holds a place
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert _active(server) == 1
        watch.cancel()
    wait_until(lambda: _active(server) == 0, what="the health stream's place freed")


def _active(server) -> int:
    return server.app.call_limit.active


def test_a_call_cancelled_while_held_frees_its_place(start_server, bundles) -> None:
    server = start_server(grpc_intake_depth=4, max_concurrent_rpcs=1)
    entered, release = hold_inference(server)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        outcome: list[grpc.StatusCode] = []

        def held_call() -> None:
            try:
                stub.Classify(pb.ClassifyRequest(model="news", texts=["held"]), timeout=0.5)
            except grpc.RpcError as error:
                outcome.append(error.code())

        caller = threading.Thread(target=held_call)
        caller.start()
        assert entered.wait(10)
        with pytest.raises(grpc.RpcError) as refused:  # the held call takes the only place
            stub.Classify(pb.ClassifyRequest(model="news", texts=["second"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        caller.join(10)
        assert outcome == [grpc.StatusCode.DEADLINE_EXCEEDED]
        wait_until(lambda: _active(server) == 0, what="the cancelled call's place freed")
        release.set()
        assert stub.Classify(pb.ClassifyRequest(model="news", texts=["third"]), timeout=10).predictions


def test_extra_intake_pauses_while_a_large_request_is_in_flight(start_server, bundles) -> None:
    """Large requests in flight (over 64 KiB each, service/request_bytes.py): only grpcio's own
    intake takes calls, so a burst of large messages is received no faster than with depth 1."""
    depth = 4
    server = start_server(grpc_intake_depth=depth)
    intake = server.app.intake
    entered, release = hold_inference(server)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        large = pb_grpc.TextClassifierStub(channel).Classify.future(
            pb.ClassifyRequest(model="news", texts=["word " * 8000] * 2), timeout=30)
        assert entered.wait(10)
        assert server.app.core.request_bytes.in_flight > 0
        taken = intake.calls_taken
        for _ in range(10):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        # only requests the extra intake had asked for before the large one arrived (at most one per task)
        assert intake.calls_taken - taken <= depth - 1
        release.set()
        assert large.result().predictions
        wait_until(lambda: server.app.core.request_bytes.in_flight == 0, what="the large request's bytes given back")
        taken = intake.calls_taken
        for _ in range(10):
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert intake.calls_taken - taken >= 5
