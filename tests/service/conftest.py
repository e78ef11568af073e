"""Fixtures for service tests: settings -> model repository -> real in-process server -> client.

The server runs its own asyncio loop in a background thread and listens on 127.0.0.1:0; tests
talk to it only through real gRPC clients and the metrics HTTP endpoint (plus ``server.call``
to run a core coroutine, e.g. a repository load, on the server's loop).
"""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.client import TextclfClient
from service.repository import RepositoryEvent
from service.server import App, create_app
from service.settings import Settings
from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle

SHORT = "the market rallied"
TEXTS = [
    SHORT,
    "the striker scored twice and the team won the match",
    "software update fixes a security bug in the browser and the new phone has a faster chip " * 3,
    "",
    "unknownword zzz",
    "investors expect the central bank to raise rates",
]


class ServerThread:
    """A real textclf server on its own event loop thread."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        self.settings = settings
        self.app_options = app_options  # create_app keyword arguments (e.g. span_exporter)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.events: list[RepositoryEvent] = []
        self._events_changed = threading.Condition()
        self.app: App | None = None

    def start(self) -> "ServerThread":
        self.thread.start()
        self.app = self.call(create_app(self.settings, **self.app_options))
        self.app.repository.listeners.append(self._record)
        self.call(self.app.start())
        return self

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        try:
            if self.app is not None:
                self.call(self.app.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.app.rest_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.app.metrics_port}/metrics"

    def _record(self, event: RepositoryEvent) -> None:
        with self._events_changed:
            self.events.append(event)
            self._events_changed.notify_all()

    def wait_event(self, predicate: Callable[[RepositoryEvent], bool], timeout: float = 20.0) -> RepositoryEvent:
        """Block until a repository event matching ``predicate`` happened (already or later)."""
        with self._events_changed:
            seen = 0
            deadline = time.monotonic() + timeout
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching repository event; saw {self.events}")
                self._events_changed.wait(remaining)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for an observable server-side condition (e.g. a metric) to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def hold_inference(server: Any, model: str = "news") -> tuple[threading.Event, threading.Event]:
    """Hook on the default version's ``runtime.run``: a batch taken to compute sets ``entered``
    and waits for ``release`` (its texts no longer count as queued)."""
    runtime = server.app.core.get_model(model).runtime
    entered, release = threading.Event(), threading.Event()
    real = runtime.run

    def held(rows):
        entered.set()
        release.wait(20)
        return real(rows)

    runtime.run = held
    return entered, release


def hold_pool_tokenizer(encoder: Any) -> tuple[threading.Event, threading.Event]:
    """Hook on a loaded version's real encoder: a call from a tokenizer-pool thread sets
    ``entered`` and waits for ``release`` (texts tokenized on the event loop pass)."""
    entered, release = threading.Event(), threading.Event()
    real = encoder.token_ids

    def held(texts):
        if threading.current_thread().name.startswith("tokenize"):
            entered.set()
            release.wait(20)
        return real(texts)

    encoder.token_ids = held
    return entered, release


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
