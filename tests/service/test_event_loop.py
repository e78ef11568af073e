"""The event loop's selector (service/event_loop.py): after activity it polls instead of sleeping
for at most ``idle_spin_us``, only while the server says it may (no RPC open), never past the
loop's own timeout, and an event that arrives meanwhile is returned at once. Each claim is
measured on the thread's CPU clock: polling costs CPU, sleeping does not."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.client import TextclfClient
from service.event_loop import SpinningSelector
from tests.support.metrics import metric, scrape
from tests.support.service_process import ServiceProcess

WINDOW_S = 0.05


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _selector(pair: tuple[socket.socket, socket.socket], window: float = WINDOW_S, may_spin: bool = True,
              spells: list[float] | None = None) -> SpinningSelector:
    selector = SpinningSelector(window, lambda: may_spin, (spells if spells is not None else []).append)
    selector.register(pair[1], 1)  # EVENT_READ
    return selector


def _event(selector: SpinningSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    """One event through ``selector`` (its activity clock starts), then drained."""
    pair[0].send(b"x")
    assert selector.select(1.0)
    pair[1].recv(16)


def _timed_select(selector: SpinningSelector, timeout: float) -> tuple[list, float, float]:
    wall, cpu = time.monotonic(), time.thread_time()
    ready = selector.select(timeout)
    return ready, time.monotonic() - wall, time.thread_time() - cpu


def test_after_activity_it_polls_for_the_window_then_sleeps(pair) -> None:
    spells: list[float] = []
    selector = _selector(pair, spells=spells)
    _event(selector, pair)
    ready, wall, cpu = _timed_select(selector, 0.3)
    assert ready == [] and wall >= 0.29
    assert cpu >= WINDOW_S * 0.5, f"polled only {cpu * 1e3:.1f} ms of CPU in a {WINDOW_S * 1e3:.0f} ms window"
    assert cpu <= WINDOW_S + 0.05, f"{cpu * 1e3:.1f} ms of CPU: polled past the window"
    assert len(spells) == 1 and WINDOW_S * 0.8 <= spells[0] <= WINDOW_S + 0.05
    selector.close()


def test_it_never_polls_when_the_server_says_no(pair) -> None:
    spells: list[float] = []
    selector = _selector(pair, may_spin=False, spells=spells)
    _event(selector, pair)
    ready, wall, cpu = _timed_select(selector, 0.2)
    assert ready == [] and wall >= 0.19
    assert cpu < 0.01 and spells == []
    selector.close()


def test_it_does_not_poll_long_after_the_last_event_or_when_off(pair) -> None:
    selector = _selector(pair)
    _event(selector, pair)
    time.sleep(WINDOW_S * 2)  # the window has passed with nothing happening
    assert _timed_select(selector, 0.1)[2] < 0.01
    off_spells: list[float] = []
    off = _selector(pair, window=0, spells=off_spells)
    _event(off, pair)
    assert _timed_select(off, 0.1)[2] < 0.01 and off_spells == []
    selector.close()
    off.close()


def test_an_event_during_the_window_is_returned_at_once(pair) -> None:
    selector = SpinningSelector(5.0, lambda: True)  # a window far longer than the test
    selector.register(pair[1], 1)
    _event(selector, pair)
    sent_at: list[float] = []
    timer = threading.Timer(0.05, lambda: (sent_at.append(time.monotonic()), pair[0].send(b"y")))
    timer.start()
    ready = selector.select(10.0)
    returned_at = time.monotonic()
    timer.join()
    assert ready and returned_at - sent_at[0] < 0.05
    selector.close()


def test_it_never_waits_past_the_loops_timeout(pair) -> None:
    selector = SpinningSelector(5.0, lambda: True)
    selector.register(pair[1], 1)
    _event(selector, pair)
    ready, wall, _cpu = _timed_select(selector, 0.02)
    assert ready == [] and 0.019 <= wall < 0.5
    selector.close()


def test_the_server_polls_between_a_lone_callers_calls_and_counts_it(bundles, repo_path) -> None:
    """Sequential calls (c=1): the polling is counted; with ``--idle-spin-us 0`` there is none; and a
    server left idle past the window uses no CPU."""
    for flags, polls in ((), True), (("--idle-spin-us", "0"), False):
        server = ServiceProcess(repo_path, *flags)
        try:
            with TextclfClient(server.address, retry=False) as client:
                for _ in range(200):
                    client.classify(["the market rallied"], "news")
            spun = metric(scrape(server.metrics_url), "textclf_event_loop_spin_seconds_total")
            assert (spun > 0) == polls, f"flags {flags}: {spun} s polled"
            time.sleep(0.2)  # idle: far past the 2 ms window
            before = _process_cpu_seconds(server.process.pid)
            time.sleep(1.0)
            idle_cpu = _process_cpu_seconds(server.process.pid) - before
            assert idle_cpu < 0.25, f"flags {flags}: an idle server used {idle_cpu:.2f} s of CPU in 1 s"  # polling: ~1 s
        finally:
            server.kill()


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
