"""``python -m service`` / ``textclf serve``: run the gRPC service until SIGTERM or SIGINT."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from service.event_loop import SpinningSelector, new_event_loop
from service.grpc_io import choose_grpc_io
from service.memory import freeze_startup_objects, limit_malloc_arenas
from service.metrics import WORKER_INDEX_ENV
from service.runtime import RuntimeConfigError
from service.settings import Settings, SettingsError, load_settings
from service.supervisor import READY_FD_ENV, run_supervisor

logger = logging.getLogger("service")


def configure_logging(level: str, worker: str | None = None) -> None:
    prefix = "" if worker is None else f"[worker {worker}] "
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


def _die_with_supervisor() -> None:
    """Linux: a worker gets SIGTERM (and drains) if its supervisor dies without stopping it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        logger.debug("PR_SET_PDEATHSIG unavailable; a worker outlives a killed supervisor")


def _tell_supervisor_ready() -> None:
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        os.write(int(fd), b"1")
        os.close(int(fd))


async def serve(settings: Settings, worker: str | None = None, selector: SpinningSelector | None = None) -> None:
    """Run one server until SIGTERM/SIGINT. ``worker``: this process is worker ``worker`` of a
    multi-worker supervisor (SO_REUSEPORT on, the supervisor serves metrics and logs the totals).
    ``selector``: the event loop's, told when it may poll (no call being handled) and where to count it."""
    from service.server import create_app  # imports grpc: only after main() has chosen gRPC core's I/O threads

    app = await create_app(settings, reuse_port=worker is not None)
    if selector is not None:
        core = app.core
        selector.may_spin = lambda: core.calls_in_flight == 0
        selector.on_spin = app.metrics.event_loop_spin.inc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await app.start()
    frozen = freeze_startup_objects()
    logger.debug("%d start-up objects frozen out of the garbage collector", frozen)
    if worker is None:
        metrics = f"http://{settings.metrics_host}:{app.metrics_port}/metrics" if app.metrics_port is not None else "off"
        rest = f"; REST http://{settings.rest_host}:{app.rest_port}/v2" if app.rest_port is not None else ""
        logger.info("textclf serving gRPC on %s:%d; metrics %s%s", settings.host, app.port, metrics, rest)
    else:
        logger.info("worker %s (pid %d) serving gRPC on %s port %d", worker, os.getpid(), settings.host, app.port)
        _tell_supervisor_ready()
    await stop.wait()
    logger.info("shutting down: draining for up to %.1f s", settings.grace_period)
    await app.stop(settings.grace_period)
    # every call the servicers saw, by final status: what a drain did can be audited from the log
    counts = json.dumps(app.metrics.request_counts(), sort_keys=True)
    if worker is None:
        logger.info("final request counts: %s", counts)
    else:
        logger.info("request counts of this worker: %s", counts)  # the supervisor logs the totals
    logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"textclf serve: {exc}", file=sys.stderr)
        return 2
    worker = os.environ.get(WORKER_INDEX_ENV)
    configure_logging(settings.log_level, worker)
    # HF tokenizers' own thread pool fights onnxruntime and the event loop for the cores (a
    # single-text encode right after an inference took up to 10 ms instead of 0.4 ms with it on;
    # docs/benchmarks.md); the caller's environment still wins
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    experiments = choose_grpc_io(settings.grpc_event_engine_io)  # before grpc is imported; workers inherit it
    logger.debug("GRPC_EXPERIMENTS=%s", experiments)
    if settings.workers > 1 and worker is None:
        return run_supervisor(settings, sys.argv[1:] if argv is None else list(argv))
    if worker is not None:
        _die_with_supervisor()
    limit_malloc_arenas(settings.malloc_arena_max)  # before the server's threads exist
    try:
        selector = SpinningSelector(settings.idle_spin_us / 1e6)
        with asyncio.Runner(loop_factory=lambda: new_event_loop(selector)) as runner:
            runner.run(serve(settings, worker, selector))
    except (RuntimeConfigError, SettingsError) as exc:  # e.g. bad TLS files, unreadable token file
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
