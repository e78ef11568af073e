"""Faults (issue 5, issue 9): the batcher. Deadlines and cancellations of the KServe API and of
both streaming RPCs are honoured before compute; a full queue answers RESOURCE_EXHAUSTED fast
while the admitted calls complete; with batching off a cancelled call holds its slot while its
work runs; a failure in the batcher loop fails its pending calls with INTERNAL.

Real in-process servers (``ServerThread``), real gRPC clients for both APIs, metrics scraped over
HTTP; unlucky timing is made deterministic by gating the inference on a threading.Event, by
holding the batcher before it takes a batch (the full queue stays full), or by
injecting one failure into the batcher (tests/support/hooks.py).
"""
from __future__ import annotations

import logging
import time

import grpc
import pytest

from client.client import classify_request
from tests.support.api_stubs import CLASSIFY, INFER, Stubs, infer_request
from tests.support.hooks import fail_next_batch, gate, hold_batch_forming
from tests.support.metrics import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc


# ----------------------------------------------------------------------------- deadlines, cancellation

def _stream_call(api: str, stubs: Stubs, timeout: float):
    if api == "textclf.v1.ClassifyStream":
        message = pb.ClassifyStreamRequest(id="1", request=classify_request(["a", "b"], "news"))
        return stubs.textclf.ClassifyStream(iter([message]), timeout=timeout)
    return stubs.kserve.ModelStreamInfer(iter([infer_request(["a", "b"])]), timeout=timeout)


DEADLINE_CALLS = {
    INFER: lambda stubs, timeout: stubs.kserve.ModelInfer(infer_request(["a", "b"]), timeout=timeout),
    "textclf.v1.ClassifyStream": lambda stubs, timeout: list(_stream_call("textclf.v1.ClassifyStream", stubs, timeout)),
    "kserve.ModelStreamInfer": lambda stubs, timeout: list(_stream_call("kserve.ModelStreamInfer", stubs, timeout)),
}


@pytest.mark.parametrize("api", list(DEADLINE_CALLS))
def test_deadline_is_honoured_before_compute(bundles, start_server, api) -> None:
    server = start_server(max_queue_delay_ms=400.0)
    stubs = Stubs(server.address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            DEADLINE_CALLS[api](stubs, 0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="deadline") == 2,
                   what="deadline drops")
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_batch_size_count") == 0, "expired texts must not be computed"
        assert metric(samples, "textclf_texts_total") == 0
        assert stubs.send(INFER, ["the market"]) == 2
    finally:
        stubs.close()


@pytest.mark.parametrize("api", [INFER, "textclf.v1.ClassifyStream", "kserve.ModelStreamInfer"])
def test_cancellation_is_honoured_before_compute(bundles, start_server, api) -> None:
    server = start_server(max_queue_delay_ms=3000.0)
    stubs = Stubs(server.address)
    try:
        call = (stubs.kserve.ModelInfer.future(infer_request(["a", "b"]), timeout=30) if api == INFER
                else _stream_call(api, stubs, 30))
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 2, what="queued texts")
        call.cancel()
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="cancelled") == 2,
                   what="cancellation drops")
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_batch_size_count") == 0
        assert metric(samples, "textclf_queue_depth") == 0
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_requests_total", api=api, code="CANCELLED") == 1,
                   what="the cancelled call counted")
    finally:
        stubs.close()


# ----------------------------------------------------------------------------- full queue

def test_full_queue_fails_fast_on_both_apis_while_admitted_calls_complete(bundles, start_server) -> None:
    server = start_server(max_queue_delay_ms=1, max_batch_size=64, max_queue_size=4, max_texts_per_request=4)
    release = hold_batch_forming(server.app.repository.get("news").scheduler)
    stubs = Stubs(server.address)
    try:
        admitted = stubs.future(CLASSIFY, ["a", "b", "c"])
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 3, what="admitted texts")
        also_admitted = stubs.future(INFER, ["d"])
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 4, what="full queue")
        rejected: list[float] = []
        for api in (CLASSIFY, INFER) * 5:  # answered while the batcher holds the full queue
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stubs.send(api, ["one more"])
            rejected.append(time.monotonic() - start)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in info.value.details()
        assert not admitted.done() and not also_admitted.done()
        release.set()
        assert len(admitted.result(timeout=10).predictions) == 3
        assert also_admitted.result(timeout=10).model_version == "2"
        assert max(rejected) < 1.0, f"rejections took up to {max(rejected) * 1e3:.0f} ms"
    finally:
        release.set()
        stubs.close()
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_rejected_texts_total") == 10
    for api in (CLASSIFY, INFER):
        assert metric(samples, "textclf_requests_total", api=api, code="RESOURCE_EXHAUSTED") == 5
        assert metric(samples, "textclf_requests_total", api=api, code="OK") == 1


def test_batching_off_a_cancelled_call_holds_its_slot_while_its_work_runs(bundles, start_server) -> None:
    """Submit-and-cancel must not bypass ``max_queue_size``: the slot is freed when the work ends."""
    server = start_server(batching=False, max_queue_size=2, max_texts_per_request=2)
    model = server.app.repository.get("news")
    entered, release = gate(model.runtime, "run")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.TextClassifierStub(channel)
            first = stub.Classify.future(classify_request(["the market"], "news"), timeout=30)
            assert entered.wait(10)
            first.cancel()
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_requests_total", code="CANCELLED") == 1,
                       what="the cancelled call counted")
            assert metric(scrape(server.metrics_url), "textclf_queue_depth") == 1  # its work still runs
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(classify_request(["a", "b"], "news"), timeout=3)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
            release.set()
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 0, what="slot freed")
            assert len(stub.Classify(classify_request(["a", "b"], "news"), timeout=10).predictions) == 2
    finally:
        release.set()



def test_a_failing_batcher_loop_fails_its_pending_calls_with_internal(bundles, start_server, caplog) -> None:
    server = start_server()
    fail_next_batch(server.app.repository.get("news").scheduler)
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.ERROR, logger="service.batching"):
        stub = pb_grpc.TextClassifierStub(channel)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(classify_request(["the market"], "news"), timeout=5)  # no deadline would hang forever
        assert info.value.code() == grpc.StatusCode.INTERNAL and time.monotonic() - start < 4
        assert stub.Classify(classify_request(["the market"], "news"), timeout=10).version == 2  # loop survived
    assert any("injected batcher failure" in (r.exc_text or "") or r.exc_info for r in caplog.records)
