"""Deeper call intake for ``grpc.aio`` servers.

grpcio's asyncio server asks gRPC core for one new call per method at a time
(``AioServer._server_main_loop``): only when that call has travelled from gRPC core through the
poller thread to the event loop does it ask for the next. Under load the loop therefore takes at most
about one new call per turn while the rest wait in gRPC core's backlog (docs/benchmarks.md, session 6).

``CallIntake`` keeps ``depth - 1`` more requests outstanding per registered method, so gRPC core can
hand several waiting calls to one loop turn. Each call it takes is run exactly as grpcio's own loop
runs it (the same ``_handle_rpc`` / ``_schedule_rpc_coro`` of grpcio's Cython module, with the same
server interceptors). These are private names of grpcio (pinned in pyproject.toml): when they are
missing the intake stays grpcio's own and says so in the log. grpcio's own ``maximum_concurrent_rpcs``
would not count the calls taken here, so the service limits calls with ``service.call_limit`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import grpc

logger = logging.getLogger(__name__)

try:  # private grpcio internals, checked at start-up (see the module docstring)
    from grpc._cython import cygrpc as _cygrpc

    _HANDLE_RPC = _cygrpc._handle_rpc
    _SCHEDULE_RPC_CORO = _cygrpc._schedule_rpc_coro
    _METHOD_RESOLVER = _cygrpc._MethodResolver
    _REQUEST_CALL_ERROR: type[BaseException] = getattr(_cygrpc, "_RequestCallError", Exception)
    _INTERNALS_PRESENT = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the grpcio build
    _INTERNALS_PRESENT = False


class CallIntake:
    """Records what is registered on a ``grpc.aio.Server`` and, once it runs, keeps extra call
    requests outstanding in gRPC core. Create it before any handler is added."""

    def __init__(self, server: grpc.aio.Server, depth: int,
                 interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
                 gate: Callable[[], Awaitable[None]] | None = None) -> None:
        self.server = server
        self.depth = depth
        self.interceptors = tuple(interceptors)
        self.gate = gate  # awaited before each extra request: the extra intake pauses while it waits
        self.calls_taken = 0  # calls this intake took (grpcio's own loop takes the others)
        self.generic_handlers: list[Any] = []
        self.registered: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        self._rpc_tasks: set[asyncio.Task] = set()
        self._gated: set[asyncio.Task | None] = set()  # intake tasks paused by the gate
        self._record_registrations()

    def _record_registrations(self) -> None:
        server = self.server
        add_generic = server.add_generic_rpc_handlers
        add_registered = server.add_registered_method_handlers

        def add_generic_rpc_handlers(handlers):  # type: ignore[no-untyped-def]
            self.generic_handlers.extend(handlers)
            return add_generic(handlers)

        def add_registered_method_handlers(service_name, method_handlers):  # type: ignore[no-untyped-def]
            for method, handler in method_handlers.items():
                self.registered[f"/{service_name}/{method}"] = handler
            return add_registered(service_name, method_handlers)

        server.add_generic_rpc_handlers = add_generic_rpc_handlers  # type: ignore[method-assign]
        server.add_registered_method_handlers = add_registered_method_handlers  # type: ignore[method-assign]

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def close(self) -> None:
        """After the server stopped: end the intake tasks the gate still holds (the others end
        when gRPC core fails their outstanding requests at shutdown)."""
        for task in list(self._gated):
            if task is not None:
                task.cancel()

    def start(self) -> bool:
        """Call after ``server.start()``. Returns whether extra intake runs."""
        if self.depth <= 1:
            return False
        cy_server = getattr(self.server, "_server", None)
        if not _INTERNALS_PRESENT or not hasattr(cy_server, "_request_registered_call"):
            logger.warning("grpc_intake_depth %d not used: grpcio's server internals not found (grpcio %s); "
                           "one call is requested at a time", self.depth, grpc.__version__)
            return False
        loop = asyncio.get_running_loop()
        resolver = _METHOD_RESOLVER(list(self.generic_handlers), dict(self.registered))
        for method in self.registered:
            for _ in range(self.depth - 1):
                task = loop.create_task(self._take_calls(cy_server, resolver, method), name="call-intake")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return True

    async def _take_calls(self, cy_server: Any, resolver: Any, method: str) -> None:
        loop = asyncio.get_running_loop()
        method_bytes = method.encode()
        while cy_server.is_running():
            if self.gate is not None:
                task = asyncio.current_task()
                self._gated.add(task)
                try:
                    await self.gate()
                except asyncio.CancelledError:
                    return  # close(): the server stopped while this intake paused
                finally:
                    self._gated.discard(task)
                if not cy_server.is_running():
                    return
            try:
                rpc_state = await cy_server._request_registered_call(method_bytes)
            except _REQUEST_CALL_ERROR:
                continue  # a failed request (as grpcio's loop does): ask again while running
            except Exception:  # noqa: BLE001 - server shut down under us, or grpcio changed
                if cy_server.is_running():
                    logger.exception("extra call intake for %s stopped", method)
                return
            self.calls_taken += 1
            rpc_coro = _HANDLE_RPC(method, resolver, self.interceptors, rpc_state, loop, False)
            rpc_task = loop.create_task(_SCHEDULE_RPC_CORO(rpc_coro, rpc_state, loop, method), name="rpc_task")
            self._rpc_tasks.add(rpc_task)  # the loop holds tasks weakly
            rpc_task.add_done_callback(self._rpc_tasks.discard)
