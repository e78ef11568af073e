"""The tests' port picker: ports children bind later must not be ones the kernel gives away."""
from __future__ import annotations

import socket

from tests.support.ports import ephemeral_port_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low, _ = ephemeral_port_range()
    ports = [free_port() for _ in range(50)]
    assert all(port < low for port in ports), (low, ports)
    assert len(set(ports)) == len(ports)


def test_a_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert sock.getsockname()[1] == port


def test_an_outgoing_connection_never_takes_a_free_port() -> None:
    """What CI hit: a loopback client's local port is drawn from the ephemeral range."""
    low, _ = ephemeral_port_range()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            assert client.getsockname()[1] >= low
