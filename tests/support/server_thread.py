"""A real textclf server in this process, for tests: its own asyncio loop in a background thread,
listening on 127.0.0.1:0. Tests talk to it only through real gRPC/HTTP clients and the metrics
endpoint (plus ``call`` to run a core coroutine, e.g. a repository load, on the server's loop)."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from service.repository import RepositoryEvent
from service.server import App, create_app
from service.settings import Settings


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
