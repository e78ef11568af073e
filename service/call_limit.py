"""``max_concurrent_rpcs``: one count of the RPCs a process handles, whoever took them from gRPC core.

grpcio's own limit (``grpc.aio.server(maximum_concurrent_rpcs=...)``) counts only the calls its own
intake loop takes, so it cannot cover the extra intake of ``service.intake``. This limit is a server
interceptor instead: interceptors run for every call, before the request message is read, inside the
task that handles the call. A call over the limit gets RESOURCE_EXHAUSTED without its message being
read (the refusal handler is request-streaming and never iterates it); an admitted call is released
when its task ends, however it ends (answered, failed, cancelled by the client or by a deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import grpc


class ConcurrentCallLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.active = 0
        self._on_refused = on_refused
        self._message = f"more than {limit} calls in progress (max_concurrent_rpcs); retry later"
        self._refusals: dict[bool, grpc.RpcMethodHandler] = {
            False: grpc.stream_unary_rpc_method_handler(self._refuse),
            True: grpc.stream_stream_rpc_method_handler(self._refuse),
        }

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        if self.active >= self.limit:
            if self._on_refused is not None:
                self._on_refused()
            return self._refusals[handler.response_streaming]
        self.active += 1
        asyncio.current_task().add_done_callback(self._release)  # type: ignore[union-attr]
        return handler

    def _release(self, _task: Any) -> None:
        self.active -= 1

    async def _refuse(self, _requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message)
