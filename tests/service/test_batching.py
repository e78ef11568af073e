"""Dynamic batching through the server: invariance, deadlines, cancellation, a full queue, off."""
from __future__ import annotations

import queue
import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from client.client import TextclfClient, classify_request
from tests.support.hooks import hold_inference_pool
from tests.support.metrics import metric, scrape, wait_until
from tests.support.texts import SHORT, TEXTS
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

V2 = {"model": "news", "version": "2"}


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    words = "market bank striker team phone chip the a of unknown zzz software rates final".split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 7, 20, 60, 90]))) for _ in range(count)]


def probabilities_of(result, labels: list[str]) -> np.ndarray:
    return np.array([[dict(p.top)[label] for label in labels] for p in result.predictions], dtype=np.float32)


def test_answers_do_not_depend_on_batch_mates(start_server, bundles) -> None:
    server = start_server(max_queue_delay_ms=10.0, max_batch_size=16, length_bucket_ratio=4.0)
    texts = mixed_texts(96)
    labels = bundles[2].labels
    with TextclfClient(server.address, retry=False) as client:
        alone = np.concatenate([probabilities_of(client.classify([t], "news", top_k=3), labels) for t in texts[:12]])
        with ThreadPoolExecutor(24) as pool:
            together = list(pool.map(lambda t: client.classify([t], "news", top_k=3), texts))
        as_one_request = probabilities_of(client.classify(texts, "news", top_k=3), labels)
    together = np.concatenate([probabilities_of(r, labels) for r in together])
    np.testing.assert_allclose(together[:12], alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(together, bundles[2].expected_probabilities(texts), atol=1e-5, rtol=0)
    np.testing.assert_allclose(as_one_request, together, atol=1e-5, rtol=0)
    samples = scrape(server.metrics_url)
    sizes, batches = metric(samples, "textclf_batch_size_sum", **V2), metric(samples, "textclf_batch_size_count", **V2)
    assert sizes == 12 + 96 + 96
    assert batches < 12 + 96 + 96 - 12, "concurrent requests must share batches"
    assert metric(samples, "textclf_batch_size_bucket", le="1.0", **V2) < batches


def test_deadline_passed_in_queue_is_dropped_before_compute(start_server, bundles) -> None:
    server = start_server(max_queue_delay_ms=400.0, max_batch_size=64)
    with TextclfClient(server.address, retry=False) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.classify(["the market", "rallied"], "news", timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="deadline") == 2,
                   what="deadline drops")
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_batch_size_count", **V2) == 0, "expired texts must not be computed"
        assert client.classify(["the market"], "news", timeout=5).version == 2


def test_client_cancellation_is_dropped_before_compute(start_server, bundles) -> None:
    server = start_server(max_queue_delay_ms=2000.0, max_batch_size=64)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        future = stub.Classify.future(classify_request(["a", "b", "c"], "news"), timeout=30)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", **V2) == 3, what="queued texts")
        future.cancel()
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="cancelled") == 3,
                   what="cancellation drops")
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_batch_size_count", **V2) == 0
    assert metric(samples, "textclf_requests_total", code="CANCELLED") == 1


def test_full_queue_is_resource_exhausted(start_server, bundles) -> None:
    server = start_server(max_queue_delay_ms=2000.0, max_batch_size=64, max_queue_size=4, max_texts_per_request=4)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        waiting = stub.Classify.future(classify_request(["a", "b", "c", "d"], "news"), timeout=30)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", **V2) == 4, what="full queue")
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(classify_request(["one more"], "news"), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in info.value.details()
        waiting.cancel()
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_rejected_texts_total", **V2) == 1
    assert metric(samples, "textclf_requests_total", code="RESOURCE_EXHAUSTED") == 1


def test_batching_off_serves_each_request_alone(start_server, bundles) -> None:
    server = start_server(batching=False)
    texts = mixed_texts(24, seed=3)
    with TextclfClient(server.address, retry=False) as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: client.classify([t], "news", top_k=3), texts))
        two = client.classify(TEXTS[:2], "news", top_k=3)
    got = np.concatenate([probabilities_of(r, bundles[2].labels) for r in results])
    np.testing.assert_allclose(got, bundles[2].expected_probabilities(texts), atol=1e-5, rtol=0)
    np.testing.assert_allclose(probabilities_of(two, bundles[2].labels), bundles[2].expected_probabilities(TEXTS[:2]),
                               atol=1e-5, rtol=0)
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_batch_size_count", **V2) == 25
    assert metric(samples, "textclf_batch_size_sum", **V2) == 26


def test_batching_off_deadline_and_full_queue(start_server, bundles) -> None:
    server = start_server(batching=False, max_queue_size=2, max_texts_per_request=2)
    with TextclfClient(server.address, retry=False) as client:
        # settings keep max_texts_per_request <= max_queue_size, so one request alone never fills the
        # queue; a full queue with batching off: tests/service/test_faults_batching.py (a running call
        # holds it)
        with pytest.raises(grpc.RpcError) as info:
            client.classify(["a", "b", "c"], "news")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.classify(["a", "b"], "news").version == 2


def test_lone_request_is_computed_at_once_without_the_inference_pool(start_server, bundles) -> None:
    """The lone-request fast path: with greedy batching, the only open RPC is admitted, tokenized
    and computed on the event loop. Proven with the inference pool's one slot held: the lone
    request is still answered (exactly as the model answers it) and counted as a batch of one; the
    request limits hold on this path too (max_texts_per_request <= max_queue_size, so a lone request
    on an idle version always fits the queue)."""
    server = start_server(max_queue_size=2, max_texts_per_request=2, max_queue_delay_ms=0.0)
    held, release = hold_inference_pool(server)
    try:
        assert held.wait(10)
        with TextclfClient(server.address, retry=False) as client:
            with pytest.raises(grpc.RpcError) as failed:  # an aborted call ends too: it leaves no open RPC behind
                client.classify(TEXTS[:1], "no-such-model", timeout=10)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            result = client.classify(TEXTS[:2], "news", top_k=3, timeout=10)
            np.testing.assert_allclose(probabilities_of(result, bundles[2].labels),
                                       bundles[2].expected_probabilities(TEXTS[:2]), atol=1e-5, rtol=0)
            with pytest.raises(grpc.RpcError) as info:
                client.classify(["a", "b", "c"], "news", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "too many texts: 3 > 2" in info.value.details()
    finally:
        release.set()
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_batch_size_count", **V2) == 1
    assert metric(samples, "textclf_batch_size_sum", **V2) == 2


def test_a_request_with_company_is_batched_not_run_on_the_event_loop(start_server, bundles) -> None:
    """While another RPC is open (here a ClassifyStream), a request takes the queued path: with the
    inference pool's slot held it waits in the queue, and is answered once the pool is free."""
    server = start_server(max_queue_delay_ms=0.0)
    held, release = hold_inference_pool(server)
    assert held.wait(10)
    outbox: queue.Queue = queue.Queue()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        stream = stub.ClassifyStream(iter(outbox.get, None), timeout=30)
        try:
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_calls_in_flight") == 1, what="open stream")
            answer = stub.Classify.future(classify_request([SHORT], "news"), timeout=30)
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_duration_seconds_count", **V2) == 1,
                       what="the text taken into a batch")
            assert metric(scrape(server.metrics_url), "textclf_batch_size_count", **V2) == 0, "computed on the loop"
            assert not answer.done()
        finally:
            release.set()
        assert answer.result(10).predictions[0].label in bundles[2].labels
        outbox.put(None)
        list(stream)
