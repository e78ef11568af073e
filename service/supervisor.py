"""Multi-worker serving: ``python -m service --workers N`` (N > 1).

The supervisor (this module, in the process that was started) does no gRPC work itself. It

* reserves the gRPC port (a concrete free port when ``port`` is 0) with a bound, non-listening
  SO_REUSEPORT socket, then starts N worker processes: ``python -m service <the same arguments>
  --workers 1 --port <port> --metrics-port -1``. Each worker is an ordinary single-process server
  (its own event loop, repository, batcher and onnxruntime session) that binds the port with
  SO_REUSEPORT, so the kernel spreads incoming *connections* over the workers;
* serves one /metrics endpoint for all of them: the workers run with ``PROMETHEUS_MULTIPROC_DIR``
  (a fresh temporary directory per supervisor) and the supervisor serves a
  ``MultiProcessCollector`` over it on the metrics port;
* on SIGTERM/SIGINT sends SIGTERM to every worker (each runs the usual graceful drain), waits for
  them and exits 0 when every worker did; logs the summed ``final request counts``;
* restarts a worker that exits while not draining (logged; at most ``MAX_RESTARTS`` in
  ``RESTART_WINDOW_S``, beyond which it drains the rest and exits 1).

Workers tell the supervisor they serve by writing one byte to the pipe named in
``TEXTCLF_WORKER_READY_FD`` (no polling, no sleeps).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.metrics import WORKER_INDEX_ENV, request_counts, serve_registry
from service.settings import Settings

logger = logging.getLogger(__name__)

READY_FD_ENV = "TEXTCLF_WORKER_READY_FD"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_MARGIN_S = 15.0  # beyond grace_period + drain_delay before a worker is killed


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) an SO_REUSEPORT socket on host:port; returns it and the bound port.

    It holds the port for the supervisor's lifetime: with port 0 every worker (and every restart)
    gets the same concrete port; a socket that does not listen receives no connections."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    exited: asyncio.Task

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.port = 0
        self.rest_port: int | None = None  # REST: every worker binds it with SO_REUSEPORT, as the gRPC port
        self.metrics_port: int | None = None
        self.workers: dict[int, Worker] = {}
        self._metrics_dir = ""
        self._stop = asyncio.Event()
        self._restarts: collections.deque[float] = collections.deque()

    # -- workers ----------------------------------------------------------------------------
    def _worker_command(self) -> list[str]:
        rest = [] if self.rest_port is None else ["--rest-port", str(self.rest_port)]
        return [sys.executable, "-m", "service", *self.argv, "--workers", "1", "--port", str(self.port),
                "--metrics-port", "-1", *rest]

    async def _spawn(self, index: int) -> tuple[Worker, asyncio.Future]:
        """Start worker ``index``; returns it and a future that is True once it serves (False if it
        exited first)."""
        read_fd, write_fd = os.pipe()
        env = {**os.environ, MULTIPROC_ENV: self._metrics_dir, WORKER_INDEX_ENV: str(index),
               READY_FD_ENV: str(write_fd)}
        try:
            process = await asyncio.create_subprocess_exec(*self._worker_command(), env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_readable() -> None:
            data = os.read(read_fd, 64)  # b"" once the worker exited without saying it serves
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if not ready.done():
                ready.set_result(bool(data))

        loop.add_reader(read_fd, on_readable)
        worker = Worker(index, process, loop.create_task(process.wait(), name=f"worker-{index}-wait"))
        self.workers[index] = worker
        logger.info("worker %d started: pid %d", index, process.pid)
        return worker, ready

    def _reaped(self, worker: Worker) -> None:
        mark_process_dead(worker.pid, self._metrics_dir)  # its live gauges leave the aggregate

    async def _restart(self, worker: Worker) -> bool:
        """Replace a worker that exited on its own; False when the restart budget is spent."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            logger.error("worker %d (pid %d) exited with %s; %d restarts in the last %.0f s already: giving up",
                         worker.index, worker.pid, worker.process.returncode, len(self._restarts), RESTART_WINDOW_S)
            return False
        self._restarts.append(now)
        logger.warning("worker %d (pid %d) exited unexpectedly with %s; restarting it", worker.index, worker.pid,
                       worker.process.returncode)
        replacement, ready = await self._spawn(worker.index)
        ready.add_done_callback(lambda f: logger.info("worker %d ready: pid %d", replacement.index, replacement.pid)
                                if f.result() else None)
        return True

    async def _stop_workers(self) -> bool:
        """SIGTERM every worker (each drains), wait; True when every one exited 0."""
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        timeout = self.settings.grace_period + self.settings.drain_delay + STOP_MARGIN_S
        waits = [worker.exited for worker in self.workers.values()]
        done, pending = await asyncio.wait(waits, timeout=timeout)
        for worker in self.workers.values():
            if not worker.exited.done():
                logger.error("worker %d (pid %d) still running %.0f s after SIGTERM; killing it", worker.index,
                             worker.pid, timeout)
                worker.process.kill()
        if pending:
            await asyncio.wait(pending)
        ok = True
        for worker in self.workers.values():
            self._reaped(worker)
            if worker.process.returncode != 0:
                logger.error("worker %d (pid %d) exited with %s", worker.index, worker.pid, worker.process.returncode)
                ok = False
        return ok

    # -- main -------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        try:
            reservation, self.port = reserve_port(self.settings.host, self.settings.port)
        except OSError as exc:
            logger.error("cannot start: cannot bind gRPC port %s:%d (%s)", self.settings.host, self.settings.port, exc)
            return 1
        rest_reservation = None
        if self.settings.rest_port >= 0:
            try:
                rest_reservation, self.rest_port = reserve_port(self.settings.rest_host, self.settings.rest_port)
            except OSError as exc:
                logger.error("cannot start: cannot bind REST port %s:%d (%s)", self.settings.rest_host,
                             self.settings.rest_port, exc)
                reservation.close()
                return 1
        self._metrics_dir = tempfile.mkdtemp(prefix="textclf-metrics-")
        http = None
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._metrics_dir)
            if self.settings.metrics_port >= 0:
                http, _ = serve_registry(registry, self.settings.metrics_host, self.settings.metrics_port)
                self.metrics_port = int(http.server_port)
            return await self._supervise()
        finally:
            if http is not None:
                http.shutdown()
                http.server_close()
            reservation.close()
            if rest_reservation is not None:
                rest_reservation.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _supervise(self) -> int:
        started = [await self._spawn(index) for index in range(self.settings.workers)]
        ready = await asyncio.gather(*(future for _, future in started))
        if not all(ready):
            failed = [w for (w, _), ok in zip(started, ready) if not ok]
            for worker in failed:
                await worker.exited
                logger.error("worker %d (pid %d) exited with %s before serving", worker.index, worker.pid,
                             worker.process.returncode)
            await self._stop_workers()
            code = failed[0].process.returncode
            return code if code in (1, 2) else 1
        metrics = (f"http://{self.settings.metrics_host}:{self.metrics_port}/metrics"
                   if self.metrics_port is not None else "off")
        rest = f"; REST http://{self.settings.rest_host}:{self.rest_port}/v2" if self.rest_port is not None else ""
        logger.info("textclf serving gRPC on %s:%d; metrics %s%s (%d workers: pids %s)", self.settings.host, self.port,
                    metrics, rest, len(self.workers), ", ".join(str(w.pid) for w in self.workers.values()))
        code = 0
        stop = asyncio.get_running_loop().create_task(self._stop.wait())
        while not self._stop.is_set():
            exits = {worker.exited: worker for worker in self.workers.values()}
            done, _ = await asyncio.wait([stop, *exits], return_when=asyncio.FIRST_COMPLETED)
            if self._stop.is_set():
                break
            for task in done:
                worker = exits[task]
                self._reaped(worker)
                if not await self._restart(worker):
                    code = 1
                    self._stop.set()
                    break
        logger.info("shutting down: draining %d workers for up to %.1f s", len(self.workers),
                    self.settings.grace_period)
        if not await self._stop_workers():
            code = 1
        counts = request_counts(MultiProcessCollector(None, path=self._metrics_dir).collect())
        # every call the servicers of all workers saw, by final status (as a single server logs it)
        logger.info("final request counts: %s", json.dumps(counts, sort_keys=True))
        logger.info("stopped")
        stop.cancel()
        return code


def run_supervisor(settings: Settings, argv: Sequence[str]) -> int:
    """Entry point from ``service.__main__`` when ``workers > 1``; returns the exit code."""
    return asyncio.run(Supervisor(settings, argv).run())
