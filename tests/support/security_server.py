"""Servers and helpers of the security tests (tests/service/test_security_*.py, and the control
RPC test of tests/service/test_faults_reload.py): real in-process servers on 127.0.0.1 (port 0) over
one module-scoped repository holding news v1, and the bearer token repository control is given."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.client import TextclfClient
from service.settings import Settings
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.server_thread import ServerThread

TOKEN = "s3cret-control-token-for-tests"
AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)


def server_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                  model_repository=str(root), providers="cpu", grace_period=1.0,
                                  intra_op_threads=1, max_queue_delay_ms=0.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_onnx_bundle(root, name="news", version=1, seed=1)
    return root


@pytest.fixture
def start(repo: Path) -> Iterator[Any]:
    """``start(root=None, **settings)``: a started ``ServerThread`` on ``root`` (default: ``repo``),
    stopped after the test."""
    started: list[ServerThread] = []

    def run(root: Path | None = None, **overrides: Any) -> ServerThread:
        server = ServerThread(server_settings(root or repo, **overrides)).start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def classify_news(client: TextclfClient) -> int:
    """The version that answers one Classify of news."""
    return client.classify(["the market rallied"], "news").version


def rpc_error(call) -> grpc.RpcError:
    """The ``grpc.RpcError`` that ``call()`` raises (the test fails if it raises none)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value
