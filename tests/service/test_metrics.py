"""Prometheus metrics scraped over HTTP move with traffic."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from client.client import TextclfClient
from tests.service.conftest import TEXTS, metric, scrape


def test_metrics_move_with_traffic(start_server, bundles) -> None:
    server = start_server(max_queue_delay_ms=20.0)
    before = scrape(server.metrics_url)
    assert metric(before, "textclf_model_loaded", model="news", version="1") == 1
    assert metric(before, "textclf_model_loaded", model="news", version="2") == 1
    assert metric(before, "textclf_model_default_version", model="news") == 2
    assert metric(before, "textclf_texts_total") == 0
    with TextclfClient(server.address, retry=False) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: client.classify([t], "news"), TEXTS * 8))
        client.classify(["market " * 100], "news", version=1)
        with pytest.raises(grpc.RpcError):
            client.classify([], "news")
    assert len(results) == len(TEXTS) * 8
    after = scrape(server.metrics_url)
    v2 = {"model": "news", "version": "2"}
    assert metric(after, "textclf_requests_total", api="textclf.v1.Classify", code="OK", **v2) == len(results)
    assert metric(after, "textclf_requests_total", api="textclf.v1.Classify", code="INVALID_ARGUMENT") == 1
    assert metric(after, "textclf_request_duration_seconds_count", api="textclf.v1.Classify") == len(results) + 2
    assert metric(after, "textclf_texts_total", **v2) == len(results)
    assert metric(after, "textclf_tokens_total", **v2) > len(results)
    assert metric(after, "textclf_truncated_texts_total", model="news", version="1") == 1
    assert metric(after, "textclf_queue_duration_seconds_count", **v2) == len(results)
    batches = metric(after, "textclf_batch_size_count", **v2)
    assert metric(after, "textclf_batch_size_sum", **v2) == len(results)
    assert 1 <= batches < len(results), "concurrent requests must have been batched together"
    assert metric(after, "textclf_inference_duration_seconds_count", **v2) == batches
    assert metric(after, "textclf_queue_depth", **v2) == 0
