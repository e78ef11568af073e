"""Our client retries an idempotent call that was reset mid-response (issue 9, item 7).

A real server behind ``tests/support/reset_proxy.py``, which breaks the next call after its
response headers went out (the call is committed, so gRPC's own retry policy never repeats it):
with an RST_STREAM as nginx sends when a replica dies mid-response, or with a reset connection.
The end-to-end version (nginx, a SIGKILLed replica) is tests/deploy/test_deploy_topology.py.
"""
from __future__ import annotations

import time

import grpc
import pytest

from client.client import RetryPolicy, TextclfClient
from tests.support.hooks import fail_next_batch
from tests.support.metrics import metric, scrape
from tests.support.reset_proxy import ResetProxy

EXPECTED = {"rst_stream": (grpc.StatusCode.INTERNAL, "RST_STREAM"), "connection_reset": (grpc.StatusCode.UNAVAILABLE, "")}


@pytest.mark.parametrize("mode", ["rst_stream", "connection_reset"])
def test_a_call_reset_mid_response_is_retried_transparently(bundles, start_server, mode) -> None:
    server = start_server()
    proxy = ResetProxy(server.address, mode, faults=1)
    try:
        # RST_STREAM: gRPC's retry policy alone (on in every TextclfClient) does not repeat the
        # committed call. (A reset connection is sometimes seen by gRPC before the headers it carried
        # and retried by gRPC itself; the failure is shown there with every retry off.)
        grpc_retry = mode == "rst_stream"
        with TextclfClient(proxy.address, timeout=10, retry=grpc_retry, retry_policy=RetryPolicy(max_attempts=1)) as plain:
            with pytest.raises(grpc.RpcError) as info:
                plain.classify(["the market rallied"], "news")
        code, fragment = EXPECTED[mode]
        assert info.value.code() == code and fragment in (info.value.details() or ""), info.value
        assert proxy.injected == 1

        proxy.faults = 2  # the next call is broken too
        with TextclfClient(proxy.address, timeout=10) as client:
            result = client.classify(["the market rallied"], "news")
        assert result.version == 2 and len(result.predictions) == 1
        assert proxy.injected == 2
        # the server answered all three calls; two answers were lost on the way back
        assert metric(scrape(server.metrics_url), "textclf_requests_total", api="textclf.v1.Classify", code="OK") == 3
    finally:
        proxy.close()


def test_retries_are_bounded_and_respect_the_deadline(bundles, start_server) -> None:
    server = start_server()
    proxy = ResetProxy(server.address, "rst_stream", faults=10_000)  # every call is broken
    try:
        with TextclfClient(proxy.address, timeout=10) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.classify(["the market"], "news")
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert proxy.injected == RetryPolicy().max_attempts  # 3 attempts, then the error

        before = proxy.injected
        patient = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1)
        with TextclfClient(proxy.address, timeout=0.6, retry_policy=patient) as client:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError):
                client.classify(["the market"], "news")
            elapsed = time.monotonic() - start
        assert elapsed < 2.0, f"retries ran {elapsed:.2f} s past a 0.6 s deadline"
        assert 1 <= proxy.injected - before < 1000
    finally:
        proxy.close()


def test_a_server_internal_answer_is_not_retried(bundles, start_server) -> None:
    """Only transport resets are transient: a server's own INTERNAL answer comes back at once."""
    server = start_server()
    fail_next_batch(server.app.repository.get("news").scheduler)
    with TextclfClient(server.address, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.classify(["the market"], "news")  # a retry would have succeeded
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert client.classify(["the market"], "news").version == 2
