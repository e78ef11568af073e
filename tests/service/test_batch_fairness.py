"""Bounded batches and fairness between requests (docs/service.md "Batching design"): ``max_batch_tokens``
caps each onnxruntime call, a request of many long texts is computed in slices, a small request
arriving behind it waits for one slice (not for all of it), and the large request still gets
every other batch. The batches are recorded (and the first one held) with a hook on the real
runtime, so the order is exact."""
from __future__ import annotations

import threading

import grpc
import numpy as np

from client.client import classify_request
from tests.support.metrics import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

V2 = {"model": "news", "version": "2"}


def words(count: int) -> str:
    """A text of exactly ``count`` tokens for the tiny bundles' word-level tokenizer (max_len 64)."""
    return " ".join(["market"] * count)


def record_batches(server) -> tuple[list[tuple[int, int]], threading.Event, threading.Event]:
    """Hook on the default version's ``runtime.run_async``: every batch is recorded as (rows,
    padded length) when it is started; the first one sets ``entered`` and waits for ``release``."""
    runtime = server.app.core.get_model("news").runtime
    batches: list[tuple[int, int]] = []
    entered, release = threading.Event(), threading.Event()
    real = runtime.run_async

    def recorded(rows, done):
        batches.append((len(rows), max(int(r.shape[0]) for r in rows)))
        if len(batches) == 1:
            entered.set()
            threading.Thread(target=lambda: (release.wait(20), real(rows, done)), daemon=True).start()
            return
        real(rows, done)

    runtime.run_async = recorded
    return batches, entered, release


def queue_depth(server) -> float:
    return metric(scrape(server.metrics_url), "textclf_queue_depth", **V2)


def test_a_small_request_waits_for_one_slice_of_a_large_one(start_server, bundles) -> None:
    """16 texts of 64 tokens with max_batch_tokens 128: slices of 2 texts. A one-text request sent
    while the first slice computes is the very next batch (first-come-first-served would put it
    behind the 14 other texts; without the cap the first batch would hold all 16)."""
    server = start_server(max_batch_tokens=128, max_queue_delay_ms=0.0)
    batches, entered, release = record_batches(server)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        large = stub.Classify.future(classify_request([words(64)] * 16, "news"), timeout=30)
        assert entered.wait(10)
        small = stub.Classify.future(classify_request(["market bank"], "news"), timeout=30)
        wait_until(lambda: queue_depth(server) == 14 + 1, what="the small request queued")
        release.set()
        assert len(large.result(20).predictions) == 16
        assert len(small.result(20).predictions) == 1
    assert batches[:2] == [(2, 64), (1, 2)]
    assert all(rows * length <= 128 for rows, length in batches)
    assert sum(rows for rows, length in batches if length == 64) == 16


def test_large_requests_still_get_every_other_batch(start_server, bundles) -> None:
    """Fairness does not starve the large request: with three medium requests (3 texts of 40, 41
    and 42 tokens; length_bucket_ratio 1 keeps lengths apart) queued behind its first slice, batches
    alternate between the newcomers (fewest tokens computed first) and the large request (the
    oldest text). Strict fewest-first would run all three before it; FIFO all of it first."""
    server = start_server(max_batch_tokens=128, max_queue_delay_ms=0.0, length_bucket_ratio=1.0)
    batches, entered, release = record_batches(server)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        large = stub.Classify.future(classify_request([words(64)] * 16, "news"), timeout=30)
        assert entered.wait(10)
        mediums = []
        for k, length in enumerate((40, 41, 42)):
            mediums.append(stub.Classify.future(classify_request([words(length)] * 3, "news"), timeout=30))
            wait_until(lambda: queue_depth(server) == 14 + 3 * (k + 1), what=f"medium request {k} queued")
        release.set()
        for call, count in [(large, 16)] + [(m, 3) for m in mediums]:
            assert len(call.result(20).predictions) == count
    lengths = [length for rows, length in batches]
    assert lengths[:8] == [64, 40, 64, 41, 64, 42, 64, 64], batches
    assert [rows for rows, length in batches if length in (40, 41, 42)] == [3, 3, 3]


def test_without_a_cap_a_batch_takes_every_compatible_text(start_server, bundles) -> None:
    """max_batch_tokens 0 turns the cap off: the 16 long texts are one onnxruntime call, and the
    answers are the same as in slices (batch invariance)."""
    sliced_server = start_server(max_batch_tokens=128, max_queue_delay_ms=0.0)
    whole_server = start_server(max_batch_tokens=0, max_queue_delay_ms=0.0)
    texts = [words(64 - k) for k in range(16)]
    answers = []
    for server in (sliced_server, whole_server):
        batches, entered, release = record_batches(server)
        release.set()
        with grpc.insecure_channel(server.address) as channel:
            result = pb_grpc.TextClassifierStub(channel).Classify(classify_request(texts, "news", top_k=3), timeout=20)
        answers.append(np.array([[s.probability for s in sorted(p.top, key=lambda s: s.label)] for p in result.predictions]))
        if server is whole_server:
            assert batches == [(16, 64)]
        else:
            assert len(batches) == 8 and all(rows * length <= 128 for rows, length in batches)
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-5, rtol=0)
