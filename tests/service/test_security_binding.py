"""Security (issue 5): the gRPC and metrics listeners bind exactly where configured (health
shares the gRPC address). Real servers and real clients on 127.0.0.1 and 127.0.0.2.
docs/security.md describes what this test proves.
"""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from client.client import TextclfClient
from service import healthcheck
from tests.support.security_server import classify_news, repo, start  # noqa: F401 - repo, start: fixtures


def _loopback_alias_available() -> bool:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _loopback_alias_available(), reason="127.0.0.2 is not a local address here")
def test_grpc_and_metrics_bind_to_the_configured_addresses(start) -> None:
    server = start(host="127.0.0.1", metrics_host="127.0.0.2")
    grpc_port, metrics_port = server.app.port, server.app.metrics_port
    assert _accepts("127.0.0.1", grpc_port) and not _accepts("127.0.0.2", grpc_port)
    assert _accepts("127.0.0.2", metrics_port) and not _accepts("127.0.0.1", metrics_port)
    with urllib.request.urlopen(f"http://127.0.0.2:{metrics_port}/metrics", timeout=5) as response:
        assert b"textclf_model_loaded" in response.read()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    with TextclfClient(server.address, retry=False) as client:  # health is on the gRPC address
        assert classify_news(client) == 1
    assert healthcheck.main(["--address", server.address]) == 0
    assert healthcheck.main(["--address", f"127.0.0.2:{grpc_port}", "--timeout", "2"]) == 1
    other = start(host="127.0.0.2", metrics_port=-1)
    assert _accepts("127.0.0.2", other.app.port) and not _accepts("127.0.0.1", other.app.port)
    assert other.app.metrics_port is None
