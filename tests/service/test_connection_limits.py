"""Connection lifetime limits (issue 9, item 5): ``max_connection_age_seconds`` /
``max_connection_idle_seconds`` really end connections: the server sends GOAWAY, the client's
channel leaves READY (observed through its connectivity state) and its next call reconnects,
within a bounded time. Drain with open streams (the other half of item 5): test_drain.py.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from client.client import classify_request
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc


class Connectivity:
    """Records a channel's connectivity states (gRPC calls the callback from its own thread)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.states: list[grpc.ChannelConnectivity] = []
        self._changed = threading.Condition()
        channel.subscribe(self._record)

    def _record(self, state: grpc.ChannelConnectivity) -> None:
        with self._changed:
            self.states.append(state)
            self._changed.notify_all()

    def wait_left_ready(self, timeout: float) -> float:
        """Seconds until the channel, READY now, leaves READY (a GOAWAY makes it IDLE)."""
        start = time.monotonic()
        with self._changed:
            assert self._changed.wait_for(lambda: self.states and self.states[-1] == grpc.ChannelConnectivity.READY,
                                          timeout)
            seen = len(self.states)
            assert self._changed.wait_for(lambda: any(s != grpc.ChannelConnectivity.READY for s in self.states[seen:]),
                                          timeout), f"the connection was never closed: {self.states}"
        return time.monotonic() - start

    def wait_ready_count(self, count: int, timeout: float) -> bool:
        """Whether the channel has been READY ``count`` times within ``timeout`` (gRPC reports a
        state change from its own thread, possibly after the call that caused it returned)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.states.count(grpc.ChannelConnectivity.READY) >= count, timeout)


@pytest.mark.parametrize("limit", ["age", "idle"])
def test_connection_age_and_idle_limits_end_connections(bundles, start_server, limit) -> None:
    """Age: the connection stays busy (a call every 50 ms, so it is never idle) and still gets
    GOAWAY after ~1 s (+ gRPC's 10 % jitter) and the 1 s grace. Idle: no call after the first one,
    GOAWAY after ~1 s. The next call reconnects and succeeds."""
    if limit == "age":
        server = start_server(max_connection_age_seconds=1.0, max_connection_age_grace_seconds=1.0,
                              max_connection_idle_seconds=0.0)
    else:
        server = start_server(max_connection_age_seconds=0.0, max_connection_idle_seconds=1.0)
    stop = threading.Event()
    with grpc.insecure_channel(server.address) as channel:
        connectivity = Connectivity(channel)
        stub = pb_grpc.TextClassifierStub(channel)
        assert stub.Classify(classify_request(["the market"], "news"), timeout=10).version == 2
        busy = None
        if limit == "age":
            def keep_busy() -> None:
                while not stop.wait(0.05):
                    try:
                        stub.Classify(classify_request(["the market"], "news"), timeout=10)
                    except grpc.RpcError:
                        pass  # the age limit may end the connection under a call: not what is measured

            busy = threading.Thread(target=keep_busy, daemon=True)
            busy.start()
        try:
            seconds = connectivity.wait_left_ready(timeout=10)
        finally:
            stop.set()
            if busy is not None:
                busy.join(10)
        assert seconds < 5, f"GOAWAY after {seconds:.1f} s"
        assert stub.Classify(classify_request(["the market"], "news"), timeout=10).version == 2  # reconnected
        assert connectivity.wait_ready_count(2, timeout=5), connectivity.states  # a new connection


def test_connection_limits_are_off_or_set_as_grpc_options(make_settings) -> None:
    from service.server import grpc_server_options

    default = dict(grpc_server_options(make_settings()))
    assert "grpc.max_connection_age_ms" not in default and default["grpc.max_connection_idle_ms"] == 300_000
    tuned = dict(grpc_server_options(make_settings(max_connection_age_seconds=120, max_connection_age_grace_seconds=5)))
    assert tuned["grpc.max_connection_age_ms"] == 120_000 and tuned["grpc.max_connection_age_grace_ms"] == 5_000
