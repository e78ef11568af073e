"""Admission by cost (``max_queue_tokens``, docs/reliability.md): the tokens admitted and not yet
computed are bounded, beyond it a request is refused RESOURCE_EXHAUSTED at once, small requests
still get in where room is left (large requests may fill only 3/4 of it), and a request costing more than the whole budget runs alone.
The inference thread is held with a hook on the real runtime, so the queue state is exact."""
from __future__ import annotations

import time

import grpc
import pytest

from client.client import classify_request
from tests.support.hooks import hold_inference, hold_pool_tokenizer
from tests.support.metrics import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

V2 = {"model": "news", "version": "2"}


def words(count: int) -> str:
    """A text of exactly ``count`` tokens for the tiny bundles' word-level tokenizer."""
    return " ".join(["market"] * count)


def test_queued_tokens_are_bounded_and_small_requests_still_get_in(start_server, bundles) -> None:
    """Budget 256: requests over 16 tokens are large and may fill 192 of it, the rest is kept for
    small requests."""
    server = start_server(max_queue_tokens=256, max_batch_size=64)
    scheduler = server.app.core.get_model("news").scheduler
    entered, release = hold_inference(server)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        computing = stub.Classify.future(classify_request(["held"], "news"), timeout=30)
        assert entered.wait(10)  # taken into a batch: its tokens no longer wait
        queued = stub.Classify.future(classify_request([words(60)] * 3, "news"), timeout=30)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", **V2) == 3, what="queued texts")
        assert scheduler.queued_tokens == 180

        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:  # large: 180 + 20 > 192
            stub.Classify(classify_request([words(20)], "news"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 192 of max_queue_tokens=256" in refused.value.details()
        assert time.monotonic() - start < 5  # refused at once, not after the held batch

        small = stub.Classify.future(classify_request(["a", "b"], "news"), timeout=30)  # small: 180 + 16 <= 256
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", **V2) == 5, what="small admitted")
        assert scheduler.queued_tokens == 196

        too_big = classify_request([words(60)] * 5, "news")  # 300 tokens: more than the whole budget
        with pytest.raises(grpc.RpcError) as refused_big:
            stub.Classify(too_big, timeout=10)
        assert refused_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        release.set()
        for call in (computing, queued, small):
            assert call.result(timeout=20).version == 2
        wait_until(lambda: scheduler.queued_tokens == 0, what="empty queue")
        assert len(stub.Classify(too_big, timeout=20).predictions) == 5  # alone, it is admitted
        assert scheduler.queued_tokens == 0
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_rejected_texts_total", **V2) == 1 + 5
    assert metric(samples, "textclf_requests_total", code="RESOURCE_EXHAUSTED") == 2


def test_a_request_in_the_tokenizer_counts_max_len_a_text(start_server, bundles) -> None:
    """Before its tokens are known (large requests are tokenized in the pool) a request holds
    ``max_len`` tokens a text, so the budget also holds against requests still being tokenized;
    its exact cost replaces that once it is tokenized."""
    server = start_server(max_queue_tokens=128)  # the tiny bundles' max_len is 64
    model = server.app.core.get_model("news")
    encoder, scheduler = model.runtime.encoder, model.scheduler
    entered, release = hold_pool_tokenizer(encoder)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        large = stub.Classify.future(classify_request([words(500), words(10)], "news"), timeout=30)  # > inline limit
        assert entered.wait(10)
        assert scheduler.queued_tokens == 2 * encoder.max_len == 128
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(classify_request(["a"], "news"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        assert large.result(timeout=20).version == 2
        wait_until(lambda: scheduler.queued_tokens == 0, what="empty queue")
        assert stub.Classify(classify_request(["a"], "news"), timeout=10).version == 2


def test_batching_off_gives_back_every_token_it_admits(start_server, bundles) -> None:
    """With batching off each request holds ``max_len`` tokens a text until its job is over and then
    gives all of them back (it counted them twice and gave back once: after max_queue_tokens / max_len
    requests every request was refused, on an idle server)."""
    server = start_server(batching=False, max_queue_tokens=256)  # the tiny bundles' max_len is 64
    scheduler = server.app.core.get_model("news").scheduler
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        for _ in range(3 * 256 // 64):  # three times what a leak of max_len a request would allow
            assert stub.Classify(classify_request(["a", words(5)], "news"), timeout=10).version == 2
            wait_until(lambda: scheduler.queued_tokens == 0, what="every token given back")
        entered, release = hold_inference(server)
        held = stub.Classify.future(classify_request(["a", "b"], "news"), timeout=30)
        assert entered.wait(10)
        assert scheduler.queued_tokens == 2 * 64  # counted once, at max_len a text
        release.set()
        assert held.result(timeout=20).version == 2
    wait_until(lambda: scheduler.queued_tokens == 0, what="every token given back")
