"""Which threads do gRPC core's socket I/O, chosen before grpcio is imported (``grpc_event_engine_io``).

gRPC core reads its configuration (``GRPC_EXPERIMENTS``) once, when grpcio is imported, so this runs
in ``python -m service`` before anything imports ``grpc``. With the EventEngine rollout flags below on
(gRPC's default), the listener and every connection's reads and writes run on the EventEngine's
work-stealing thread pool; that pool starts one more thread, at most once a second, whenever all of its
workers are busy (a burst of 4 MiB messages is enough), and gives a thread back only after 20 s without
work, so a serving process ends an attack with more threads than it started with. Off, the same I/O runs
on gRPC's epoll poller, driven by the completion-queue thread grpcio's asyncio server already polls with:
no thread is added (docs/reliability.md "Ninth pass").
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

GRPC_EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
# gRPC core's rollout flags (grpcio 1.85) that put connections' I/O on the EventEngine thread pool
EVENT_ENGINE_IO_EXPERIMENTS = ("event_engine_listener", "event_engine_for_all_other_endpoints",
                               "event_engine_client", "event_engine_callback_cq")


def _named(value: str) -> set[str]:
    """Experiments a GRPC_EXPERIMENTS value names, on or off (``-name``)."""
    return {item.strip().lstrip("-") for item in value.split(",") if item.strip()}


def choose_grpc_io(event_engine_io: bool, environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``GRPC_EXPERIMENTS`` for this process and the workers it starts; returns the value in effect.
    With ``event_engine_io`` off, each flag above is turned off unless the caller's own GRPC_EXPERIMENTS
    names it already (the caller's choice wins, flag by flag). Idempotent: a worker repeats its
    supervisor's choice."""
    current = environ.get(GRPC_EXPERIMENTS_ENV, "")
    if not event_engine_io:
        named = _named(current)
        missing = [f"-{name}" for name in EVENT_ENGINE_IO_EXPERIMENTS if name not in named]
        if missing:
            environ[GRPC_EXPERIMENTS_ENV] = ",".join(item for item in (current.strip(), *missing) if item)
    value = environ.get(GRPC_EXPERIMENTS_ENV, "")
    if "grpc" in sys.modules and value != current:
        # only reachable when the server is started from a process that already imported grpcio (tests)
        logger.warning("grpcio was imported before %s was set; gRPC core keeps the I/O threads it started with",
                       GRPC_EXPERIMENTS_ENV)
    return value
