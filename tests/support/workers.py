"""``python -m service --workers N`` as a real supervisor process for tests: the worker pids it
logs, the per-worker request counts it exports, and a fixture that starts it (and never leaves a
worker behind). Used by tests/service/test_workers.py and the REST tests (tests/service/api/)."""
from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.metrics import scrape
from tests.support.service_process import ServiceProcess

STARTED = re.compile(r"worker (\d+) started: pid (\d+)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Workers(ServiceProcess):
    def worker_pids(self) -> dict[int, int]:
        """Latest pid of each worker index, from the supervisor's log."""
        return {int(m.group(1)): int(m.group(2)) for m in STARTED.finditer(self.log)}

    def all_pids(self) -> set[int]:
        return {int(m.group(2)) for m in STARTED.finditer(self.log)}

    def worker_counts(self) -> dict[str, float]:
        samples = scrape(self.metrics_url)
        return {dict(labels)["worker"]: value for (name, labels), value in samples.items()
                if name == "textclf_worker_requests_total"}


@pytest.fixture
def start_workers(repo_path: Path) -> Iterator:
    started: list[Workers] = []

    def start(*extra: str) -> Workers:
        process = Workers(repo_path, "--workers", "2", "--grace-period", "5", *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        for pid in process.all_pids():  # never leave a worker behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
