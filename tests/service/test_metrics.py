"""Prometheus metrics scraped over HTTP move with traffic."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from client.client import TextclfClient
from tests.support.metrics import metric, scrape
from tests.support.texts import TEXTS


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


def _half_open(port: int, count: int) -> list:
    """``count`` connections that send part of a request head and then nothing (slowloris)."""
    import socket

    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    return sockets


def test_idle_connections_cannot_exhaust_the_metrics_endpoint(start_server, bundles) -> None:
    """300 half-sent requests: no thread is added for them and a scrape still answers (the
    endpoint evicts the connections that waited longest for their headers)."""
    import threading

    server = start_server()
    scrape(server.metrics_url)
    threads_before = threading.active_count()
    sockets = _half_open(server.app.metrics_port, 300)
    try:
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_model_loaded", model="news", version="2") == 1
        assert threading.active_count() <= threads_before
    finally:
        for sock in sockets:
            sock.close()


def test_metrics_endpoint_closes_a_connection_that_never_finishes_its_headers() -> None:
    """The same server class serves the multi-worker supervisor's endpoint (service/supervisor.py)."""
    import time

    from prometheus_client import CollectorRegistry

    from service.metrics import MetricsHTTPServer

    http = MetricsHTTPServer(CollectorRegistry(), "127.0.0.1", 0, header_timeout=0.2)
    try:
        [sock] = _half_open(http.server_port, 1)
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not answered
        assert time.monotonic() - start < 4
        sock.close()
        [sock] = _half_open(http.server_port, 1)
        sock.sendall(b"\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 OK")
        sock.close()
    finally:
        http.shutdown()
