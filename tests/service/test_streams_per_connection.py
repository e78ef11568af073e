"""``max_concurrent_streams``: calls beyond the per-connection limit wait in the client, none is
refused (service/server.py). gRPC core counts a call whose answer the client already has as open
until the server has released it; without headroom for those, a client that opens its next call as
soon as one ends was refused at the limit with UNAVAILABLE (RST_STREAM REFUSED_STREAM), which
neither gRPC's transparent retry nor tritonclient retries.

Real in-process server, one real client connection with retries off (a refusal would surface),
the in-flight count read from the metrics endpoint; the inference is held with a hook so the
limit is observed while it is full.
"""
from __future__ import annotations

from collections import Counter

import grpc

from client.client import classify_request
from tests.support.hooks import hold_inference
from tests.support.metrics import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

LIMIT = 4


def _outcomes(futures: list[grpc.Future]) -> Counter:
    outcomes: Counter = Counter()
    for future in futures:
        try:
            future.result()
            outcomes["OK"] += 1
        except grpc.RpcError as exc:
            outcomes[f"{exc.code().name}: {exc.details()}"] += 1
    return outcomes


def test_calls_beyond_the_stream_limit_of_a_connection_wait_in_the_client_and_none_is_refused(
        bundles, start_server) -> None:
    server = start_server(max_concurrent_streams=LIMIT, batching=False, max_concurrent_rpcs=1024)
    entered, release = hold_inference(server)
    with grpc.insecure_channel(server.address, options=[("grpc.enable_retries", 0)]) as channel:
        classify = pb_grpc.TextClassifierStub(channel).Classify
        held = [classify.future(classify_request([f"text {i}"], "news"), timeout=30) for i in range(4 * LIMIT)]
        assert entered.wait(10)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_calls_in_flight") == LIMIT,
                   what="the connection's limit of calls in the server")
        assert not any(future.done() for future in held)  # the others wait in the client, none refused
        release.set()
        assert _outcomes(held) == Counter(OK=4 * LIMIT)
        # the unlucky timing: each call that ends frees a place the client fills at once, again and again
        for _ in range(10):
            burst = [classify.future(classify_request([f"text {i}"], "news"), timeout=30) for i in range(8 * LIMIT)]
            assert _outcomes(burst) == Counter(OK=8 * LIMIT)
