"""Fixtures for service tests: settings -> model repository -> real in-process server -> client.

The server (tests/support/server_thread.py) runs its own asyncio loop in a background thread and
listens on 127.0.0.1:0; tests talk to it only through real gRPC clients and the metrics HTTP
endpoint (tests/support/metrics.py), plus ``server.call`` to run a core coroutine, e.g. a
repository load, on the server's loop. Helpers the tests import live in tests/support/.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.client import TextclfClient
from service.settings import Settings
from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle
from tests.support.server_thread import ServerThread


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def bundles(repo_path: Path) -> dict[int, TinyBundle]:
    """news v1 and v2 (different weights: they answer differently)."""
    return {1: make_onnx_bundle(repo_path, name="news", version=1, seed=1),
            2: make_onnx_bundle(repo_path, name="news", version=2, seed=2)}


@pytest.fixture
def make_settings(repo_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                      model_repository=str(repo_path), providers="cpu", grace_period=2.0,
                                      intra_op_threads=1, max_queue_delay_ms=1.0)
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def start_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        server = ServerThread(make_settings(**overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(bundles: dict[int, TinyBundle], start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server()


@pytest.fixture
def client(server: ServerThread) -> Iterator[TextclfClient]:
    with TextclfClient(server.address, timeout=10, retry=False) as c:
        yield c
