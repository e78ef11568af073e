"""Bounded bytes of large requests in flight, checked before parsing (service/request_bytes.py,
docs/reliability.md "Bounded work before admission"). Inference is held with a hook on the real
runtime, so the in-flight state is exact; "before parsing" is proven with bytes that do not parse:
they are refused RESOURCE_EXHAUSTED, not INVALID_ARGUMENT."""
from __future__ import annotations

import queue
import time

import grpc
import pytest

from client.client import classify_request
from tests.support.api_stubs import own_connection
from tests.support.hooks import hold_inference
from tests.support.metrics import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

CLASSIFY = "/textclf.v1.TextClassifier/Classify"
LARGE = ["market " * 6000] * 2  # ~84 KB: over the 64 KiB a request may have without counting
BUDGET = 100_000  # one large request fits, two do not


def test_a_large_request_beyond_the_budget_is_refused_before_it_is_parsed(start_server, bundles) -> None:
    server = start_server(max_request_bytes_in_flight=BUDGET)
    budget = server.app.core.request_bytes
    entered, release = hold_inference(server)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        raw = channel.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None)
        first = stub.Classify.future(classify_request(LARGE, "news"), timeout=30)
        assert entered.wait(10)
        assert budget.in_flight == len(classify_request(LARGE, "news").SerializeToString())

        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            raw(b"\xff" * 90_000, timeout=10)  # not a protobuf message at all: never parsed
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_request_bytes_in_flight=100000" in refused.value.details()
        assert time.monotonic() - start < 5  # at once, not after the held batch

        small = stub.Classify.future(classify_request(["market bank"], "news"), timeout=30)  # never refused by it
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", model="news", version="2") == 1,
                   what="the small request admitted")
        release.set()
        assert len(first.result(20).predictions) == 2 and len(small.result(20).predictions) == 1
        wait_until(lambda: budget.in_flight == 0, what="the budget given back")
        with pytest.raises(grpc.RpcError) as undecodable:  # alone, the same bytes are parsed (and refused as such)
            raw(b"\xff" * 90_000, timeout=10)
        assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metric(scrape(server.metrics_url), "textclf_requests_total", api="textclf.v1.Classify",
                  code="RESOURCE_EXHAUSTED") == 1


def test_a_large_stream_message_waits_for_room_instead_of_being_refused(start_server, bundles) -> None:
    """A stream's large message is parsed once the budget has room (the stream reads nothing more
    meanwhile), then answered; the budget is given back as each answer is sent."""
    server = start_server(max_request_bytes_in_flight=BUDGET)
    budget = server.app.core.request_bytes
    entered, release = hold_inference(server)
    outbox: queue.Queue = queue.Queue()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        first = stub.Classify.future(classify_request(LARGE, "news"), timeout=30)
        assert entered.wait(10)
        held = budget.in_flight
        answers = stub.ClassifyStream(iter(outbox.get, None), timeout=30)
        outbox.put(pb.ClassifyStreamRequest(id="big", request=classify_request(LARGE, "news")))
        wait_until(lambda: budget.waiting == 1, what="the stream's message waiting for room")
        assert budget.in_flight == held, "the stream's message was parsed and taken while the budget was full"
        assert metric(scrape(server.metrics_url), "textclf_queue_depth", model="news", version="2") == 0
        release.set()
        assert len(first.result(20).predictions) == 2
        answer = next(answers)
        assert answer.id == "big" and len(answer.response.predictions) == 2
        outbox.put(None)
        assert list(answers) == []
    wait_until(lambda: budget.in_flight == 0, what="the budget given back")


def test_a_connection_that_keeps_sending_large_requests_past_the_budget_is_refused_before_reading(
        start_server, bundles) -> None:
    """Two large requests refused on one connection within a second: while one of that size still
    would not fit, its next call is refused before its message is read (bytes that would be
    INVALID_ARGUMENT if read get RESOURCE_EXHAUSTED), counted like any refusal; other connections'
    small requests are admitted as before, and once the budget has room the connection is read again.
    The refusal before reading is answered after ``refuse_unread_delay_ms``, the budget's own at once."""
    server = start_server(max_request_bytes_in_flight=BUDGET, refuse_unread_delay_ms=300)
    budget = server.app.core.request_bytes
    entered, release = hold_inference(server)
    not_protobuf = b"\xff" * 90_000
    with own_connection(server.address) as bulk, own_connection(server.address) as pushy, \
            own_connection(server.address) as other:
        first = pb_grpc.TextClassifierStub(bulk).Classify.future(classify_request(LARGE, "news"), timeout=30)
        assert entered.wait(10)
        raw = pushy.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None)
        for _ in range(2):  # read, then refused by the budget (it does not fit beside the held one)
            with pytest.raises(grpc.RpcError) as refused:
                raw(not_protobuf, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many large requests in flight" in refused.value.details()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as unread:
            raw(b"\x00", timeout=10)  # field number 0: INVALID_ARGUMENT, had it been read
        assert time.monotonic() - start >= 0.3, "a refusal before reading was answered before its delay"
        assert unread.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "refused before it was read" in unread.value.details()

        small = pb_grpc.TextClassifierStub(other).Classify.future(classify_request(["market bank"], "news"), timeout=30)
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", model="news", version="2") == 1,
                   what="another connection's small request admitted")
        release.set()
        assert len(first.result(20).predictions) == 2 and len(small.result(20).predictions) == 1
        wait_until(lambda: budget.in_flight == 0, what="the budget given back")
        with pytest.raises(grpc.RpcError) as read_again:  # room again: the same connection's call is read
            raw(b"\x00", timeout=10)
        assert read_again.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metric(scrape(server.metrics_url), "textclf_requests_total", api="textclf.v1.Classify",
                  code="RESOURCE_EXHAUSTED") == 3


def test_refusing_unread_counts_refusals_per_connection_and_can_be_turned_off() -> None:
    """``refuse_unread_after`` refusals of one connection mark it (not one, not another connection's);
    0 never marks (the compose deployment, where nginx's upstream connections carry many clients)."""
    from service.errors import ResourceExhausted
    from service.request_bytes import RequestBytesBudget

    for after, marked_after in ((2, 2), (0, None)):
        budget = RequestBytesBudget(100_000, refuse_unread_after=after)
        assert budget.take(90_000, lambda: "ipv4:10.0.0.1:1000") == 90_000  # in flight: the next does not fit
        for refusals in range(1, 4):
            with pytest.raises(ResourceExhausted):
                budget.take(90_000, lambda: "ipv4:10.0.0.2:2000")
            budget.refuse_before_reading(lambda: "ipv4:10.0.0.3:3000")  # another connection: never
            if marked_after is not None and refusals >= marked_after:
                with pytest.raises(ResourceExhausted, match="refused before it was read"):
                    budget.refuse_before_reading(lambda: "ipv4:10.0.0.2:2000")
            else:
                budget.refuse_before_reading(lambda: "ipv4:10.0.0.2:2000")
        budget.give(90_000)  # room again: read
        budget.refuse_before_reading(lambda: "ipv4:10.0.0.2:2000")


def test_remembered_connections_are_bounded_and_the_oldest_forgotten_first() -> None:
    """An attacker opening a new connection per refused request cannot grow what is remembered past
    MAX_REFUSED_PEERS; the oldest connection is forgotten first, the newest still refused unread."""
    from service.errors import ResourceExhausted
    from service.request_bytes import MAX_REFUSED_PEERS, RequestBytesBudget

    budget = RequestBytesBudget(100_000, refuse_unread_after=1)
    budget.take(90_000)
    for k in range(MAX_REFUSED_PEERS + 10):
        with pytest.raises(ResourceExhausted):
            budget.take(90_000, lambda k=k: f"ipv4:10.0.{k // 256}.{k % 256}:4000")
    assert len(budget._refused_peers) == MAX_REFUSED_PEERS
    budget.refuse_before_reading(lambda: "ipv4:10.0.0.0:4000")  # the first: forgotten, read
    with pytest.raises(ResourceExhausted, match="refused before it was read"):
        last = MAX_REFUSED_PEERS + 9
        budget.refuse_before_reading(lambda: f"ipv4:10.0.{last // 256}.{last % 256}:4000")


def test_refusals_before_reading_are_held_for_the_delay_and_at_most_max_held_at_once() -> None:
    """Each held refusal is an open call: past MAX_HELD_REFUSALS (an attacker with many open calls) the
    rest are answered at once; a cancelled hold gives its place back; delay 0 answers at once."""
    import asyncio

    from service.request_bytes import MAX_HELD_REFUSALS, RequestBytesBudget

    async def scenario() -> None:
        budget = RequestBytesBudget(100_000, refuse_unread_delay=60.0)
        held = [asyncio.ensure_future(budget.hold_refusal()) for _ in range(MAX_HELD_REFUSALS)]
        while budget.held_refusals < MAX_HELD_REFUSALS:
            await asyncio.sleep(0)
        await asyncio.wait_for(budget.hold_refusal(), 5)  # one more: not held
        assert not any(task.done() for task in held)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert budget.held_refusals == 0
        await asyncio.wait_for(RequestBytesBudget(100_000, refuse_unread_delay=0.0).hold_refusal(), 5)

    asyncio.run(scenario())


def test_behind_a_proxy_refusals_count_per_client_connection_named_in_metadata(start_server, bundles) -> None:
    """``client_connection_header``: one connection (a proxy's) carries two clients named in
    metadata; the one that keeps sending large requests past the budget is refused unread, the other
    one's calls on the very same connection are read (with the connection as the key, both would be
    refused). A client naming itself first in a list is keyed by the last value (the proxy's)."""
    server = start_server(max_request_bytes_in_flight=BUDGET, refuse_unread_delay_ms=0,
                          client_connection_header="x-client-connection")
    entered, release = hold_inference(server)
    not_protobuf = b"\xff" * 90_000
    pushy, polite = (("x-client-connection", "10.0.0.1:1111"),), (("x-client-connection", "10.0.0.2:2222"),)
    with own_connection(server.address) as bulk, own_connection(server.address) as proxy:
        first = pb_grpc.TextClassifierStub(bulk).Classify.future(classify_request(LARGE, "news"), timeout=30)
        assert entered.wait(10)
        raw = proxy.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as refused:
                raw(not_protobuf, timeout=10, metadata=pushy)
            assert "too many large requests in flight" in refused.value.details()
        with pytest.raises(grpc.RpcError) as unread:
            raw(b"\x00", timeout=10, metadata=pushy)
        assert "refused before it was read" in unread.value.details()
        with pytest.raises(grpc.RpcError) as read:  # another client on the same connection: read
            raw(b"\x00", timeout=10, metadata=polite)
        assert read.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as listed:
            raw(b"\x00", timeout=10, metadata=(("x-client-connection", "10.0.0.9:9"), pushy[0]))
        assert "refused before it was read" in listed.value.details()
        release.set()
        assert len(first.result(20).predictions) == 2


def test_client_connection_header_must_be_a_metadata_key() -> None:
    from service.settings import SettingsError, load_settings

    assert load_settings(["--client-connection-header", "x-client-connection"], environ={}).client_connection_header
    for bad in ("X-Client", "grpc-peer", "x-client-bin", "has space"):
        with pytest.raises(SettingsError, match="client_connection_header"):
            load_settings(["--client-connection-header", bad], environ={})
