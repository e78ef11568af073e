"""The one boundary between service errors and gRPC status codes, plus the request metric.

Servicer methods are decorated with ``@unary(api)`` (unary-unary) or ``@stream(api)``
(stream-stream / unary-stream async generators). The wrapped method gets an extra ``call``
argument (``CallInfo``) on which it records the model and version it resolved, so the request
metric ``textclf_requests_total{api, model, version, code}`` is labelled correctly.

* ``ServiceError`` -> its ``code`` and message;
* anything else -> INTERNAL with a generic message; this is the only error logged with a
  traceback;
* a client cancellation is recorded as CANCELLED and re-raised to grpc.

``status_of(exc)`` gives the same mapping for errors reported inside a stream message.

The boundary also tells the core when each call starts and ends (``InferenceCore.call_started``:
calls in flight for the drain, open RPCs for the lone-request fast path).

Servicers are registered through ``add_servicer`` so that request bytes which are not the
method's message (invalid UTF-8 in a string field, garbage) reach the boundary as
``UndecodableRequest`` and are answered INVALID_ARGUMENT and counted, instead of grpc's own
UNKNOWN "Unexpected DecodeError" (or INTERNAL in the middle of a stream) that no metric sees.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from service.auth import authorization_values
from service.errors import Internal, InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from service.request_bytes import RequestBytesBudget

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class CallInfo:
    api: str
    model: str = ""
    version: str = ""

    def resolved(self, model: str, version: int | str | None) -> None:
        self.model = model
        self.version = "" if version is None else str(version)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to (status code, client-safe message); logs INTERNAL with a traceback."""
    if isinstance(exc, ServiceError) and not isinstance(exc, Internal):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled by the client"
    if not isinstance(exc, Internal):
        logger.error("internal error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, Internal.GENERIC_MESSAGE


@dataclass(frozen=True)
class UndecodableRequest:
    """Handed to a servicer in place of a request message whose bytes did not parse."""

    message_type: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"the request is not a valid {self.message_type} message "
                               "(malformed protobuf or a string field that is not UTF-8)")


def lenient_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Wrap a ``Message.FromString``: a DecodeError becomes an ``UndecodableRequest``."""
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    message_type = descriptor.full_name if descriptor is not None else "request"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return UndecodableRequest(message_type)

    return parse


@dataclass(frozen=True)
class UnparsedRequest:
    """The request bytes of a control RPC, parsed only after its token was checked (``unary(control=True)``)."""

    data: bytes
    deserialize: Callable[[bytes], Any]

    def parse(self) -> Any:
        message = lenient_deserializer(self.deserialize)(self.data)
        if isinstance(message, UndecodableRequest):
            raise message.error()
        return message


def _deferred_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    return lambda data: UnparsedRequest(data, deserialize)


class NoRequestMessage(Exception):
    """The call has no request message to read: gRPC refused it (over ``max_receive_message_bytes``,
    and has answered the call itself) or the client ended its side without one. Not counted, as
    grpcio's own unary path never showed such calls to a servicer."""

    MESSAGE = "the call ended without a request message"


@dataclass(frozen=True)
class PendingRequest:
    """A unary call whose request message the boundary has not read yet (``unary`` reads it once
    the call may proceed)."""

    context: Any
    deserialize: Callable[[bytes], Any]

    async def read(self) -> UnparsedRequest:
        data = await self.context.read()
        if data is grpc.aio.EOF:
            raise NoRequestMessage()
        return UnparsedRequest(data, self.deserialize)


def _reading_in_the_boundary(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A unary-unary method served as a request stream of one message: grpcio's unary path reads
    the message before any servicer code runs, so it could never be refused unread."""
    unary_unary, deserialize = handler.unary_unary, handler.request_deserializer

    async def one_message(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await unary_unary(PendingRequest(context, deserialize), context)

    return grpc.stream_unary_rpc_method_handler(one_message, None, handler.response_serializer)


def _lenient_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Requests of unary calls are read and parsed by the ``unary`` wrapper, messages of request
    streams parsed by the ``stream`` wrapper, after the token of a control RPC and the request-bytes
    budget were checked; the request of a response stream is parsed leniently."""
    if not handler.request_streaming and not handler.response_streaming:
        return _reading_in_the_boundary(handler)
    serialize = handler.response_serializer
    if handler.request_streaming:
        parse = _deferred_deserializer(handler.request_deserializer)
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, parse, serialize)
        return grpc.stream_unary_rpc_method_handler(handler.stream_unary, parse, serialize)
    return grpc.unary_stream_rpc_method_handler(handler.unary_stream, lenient_deserializer(handler.request_deserializer),
                                                serialize)


class _LenientRegistrar:
    """Stands in for the server in a generated ``add_<Service>Servicer_to_server``: registers the
    same method table with lenient request deserializers."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.registered = False

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the generated code passes the same table to add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        lenient = {name: _lenient_handler(handler) for name, handler in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, lenient),))
        self.server.add_registered_method_handlers(service, lenient)
        self.registered = True


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """``add_to_server(servicer, server)`` (a generated ``add_*Servicer_to_server``), with request
    deserialization failures answered by the boundary (see the module docstring)."""
    registrar = _LenientRegistrar(server)
    add_to_server(servicer, registrar)
    if not registrar.registered:
        raise RuntimeError(f"{add_to_server.__name__} did not register a method table (grpcio-tools too old?)")


async def _decoded(messages: AsyncIterator[Any], budget: RequestBytesBudget, taken: deque[int]) -> AsyncIterator[Any]:
    """Parse each message of a request stream once it fits the request-bytes budget: until then
    the stream reads nothing more (back-pressure on that client alone). What each message took is
    appended to ``taken`` (answers come one per message, in order: ``stream`` gives it back as the
    message's answer is sent)."""
    async for message in messages:
        if isinstance(message, UnparsedRequest):
            taken.append(await budget.take_when_free(len(message.data)))
            message = message.parse()
        if isinstance(message, UndecodableRequest):
            raise message.error()
        yield message


STREAM_DRAINED = "server is shutting down: this stream is closed after its answered messages; reconnect to retry"


async def _until_draining(messages: AsyncIterator[Any], draining: asyncio.Event) -> AsyncIterator[Any]:
    """The request stream until the server starts draining; then it ends with Unavailable, so the
    stream answers the messages it already read and closes with UNAVAILABLE (retryable) right
    away, instead of holding the shutdown for the whole grace period while its client idles."""
    iterator = messages.__aiter__()
    drained = asyncio.ensure_future(draining.wait())
    try:
        while not draining.is_set():
            read = asyncio.ensure_future(iterator.__anext__())
            await asyncio.wait((read, drained), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)
                break
            try:
                message = read.result()
            except StopAsyncIteration:
                return
            yield message
        raise Unavailable(STREAM_DRAINED)
    finally:
        drained.cancel()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the ``time.monotonic()`` clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def record(metrics: Any, call: CallInfo, code: grpc.StatusCode, seconds: float) -> None:
    metrics.observe_request(call.api, call.model, call.version, code.name, seconds)


def end_span(tracer: Any, traced: Any, call: CallInfo, exc: BaseException | None,
             context: grpc.aio.ServicerContext | None = None) -> None:
    """TRACING HOOK (service/tracing.py): end a request's span with the status the boundary
    answers for ``exc`` (None = OK), without logging anything."""
    code, message = grpc.StatusCode.OK, ""
    if isinstance(exc, ServiceError) and not isinstance(exc, Internal):
        code, message = exc.code, exc.message
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        code = grpc.StatusCode.CANCELLED
    elif isinstance(exc, grpc.aio.AbortError) and context is not None:
        code = context.code() or grpc.StatusCode.UNKNOWN
    elif exc is not None:
        code, message = grpc.StatusCode.INTERNAL, Internal.GENERIC_MESSAGE
    tracer.end(traced, call.model, call.version, code.name, message)


async def answer_in_stream(metrics: Any, api: str, handle: Callable[[CallInfo], Awaitable[T]],
                           answer_error: Callable[[grpc.StatusCode, str], T], tracer: Any = None) -> T:
    """One message of a stream: ``handle(call)``, recorded under its own request metric ``api``
    (and, with a ``tracer``, in its own span, a child of the stream's). A failure is answered in
    place with ``answer_error(code, message)`` and the stream goes on; a cancellation (the stream
    ended) is recorded as CANCELLED and propagates."""
    call, start, code = CallInfo(api), time.perf_counter(), grpc.StatusCode.OK
    traced = None if tracer is None else tracer.begin(api)  # TRACING HOOK
    failure: BaseException | None = None
    try:
        return await handle(call)
    except asyncio.CancelledError as exc:
        code, failure = grpc.StatusCode.CANCELLED, exc
        raise
    except Exception as exc:  # noqa: BLE001 - one message's failure must not end the stream
        failure = exc
        code, message = status_of(exc)
        return answer_error(code, message)
    finally:
        record(metrics, call, code, time.perf_counter() - start)
        if traced is not None:
            end_span(tracer, traced, call, failure)


async def _fail(metrics: Any, call: CallInfo, context: grpc.aio.ServicerContext, exc: BaseException,
                start: float) -> None:
    """Record the request metric, then send the mapped status (the metric is recorded first so a
    client that sees the error also sees it counted). Cancellation and grpc-internal exits
    (abort already sent, generator closed) are recorded and left to propagate."""
    seconds = time.perf_counter() - start
    if isinstance(exc, asyncio.CancelledError):
        record(metrics, call, grpc.StatusCode.CANCELLED, seconds)
        return
    if isinstance(exc, grpc.aio.AbortError):
        record(metrics, call, context.code() or grpc.StatusCode.UNKNOWN, seconds)
        return
    if not isinstance(exc, Exception):  # GeneratorExit, KeyboardInterrupt, SystemExit
        return
    code, message = status_of(exc)
    record(metrics, call, code, seconds)
    await context.abort(code, message)


def client_connection(context: grpc.aio.ServicerContext, header: str) -> Callable[[], str]:
    """The caller's connection as the per-connection rules see it (``RequestBytesBudget``): gRPC's
    peer, or where a proxy in front names the client's own connection in metadata
    (``client_connection_header``), its value (the last one, should the client have sent its own)."""
    if not header:
        return context.peer

    def named() -> str:
        value = ""
        for key, item in context.invocation_metadata() or ():
            if key == header:
                value = item
        return f"{header}={value.strip()}" if value.strip() else context.peer()

    return named


def unary(api: str, *, control: bool = False) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate ``async def method(self, request, context, call)``; ``self.core.metrics`` is used.
    The request arrives unread (``add_servicer``): it is read unless its connection keeps sending
    large requests past the core's ``request_bytes`` budget, and a large one is counted against that
    budget (RESOURCE_EXHAUSTED beyond it) before it is parsed. ``control=True``
    (repository-control RPCs): the bearer token is checked (``core.authorize_control``) before the
    request bytes are parsed at all."""

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            call = CallInfo(api)
            start = time.perf_counter()
            tracer = self.core.tracer
            traced = None if tracer is None else tracer.begin(api, context.invocation_metadata())  # TRACING HOOK
            self.core.call_started(context)
            budget, taken = self.core.request_bytes, 0
            client = client_connection(context, self.core.settings.client_connection_header)
            try:
                if control:
                    self.core.authorize_control(authorization_values(context.invocation_metadata()))
                if isinstance(request, PendingRequest):
                    try:
                        budget.refuse_before_reading(client)
                    except ResourceExhausted:
                        await budget.hold_refusal()  # a client retrying at once comes back less often
                        raise
                    request = await request.read()
                if isinstance(request, UnparsedRequest):
                    taken = budget.take(len(request.data), client)
                    request = request.parse()
                if isinstance(request, UndecodableRequest):
                    raise request.error()
                response = await method(self, request, context, call)
            except NoRequestMessage:
                if traced is not None:
                    end_span(tracer, traced, call, InvalidArgument(NoRequestMessage.MESSAGE), context)
                # answers a client that ended its side without a message; a no-op where gRPC has answered
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NoRequestMessage.MESSAGE)
            except BaseException as exc:  # noqa: BLE001 - the boundary maps everything
                if traced is not None:
                    end_span(tracer, traced, call, exc, context)
                if isinstance(exc, asyncio.CancelledError) and isinstance(request, PendingRequest):
                    raise  # ended before its message arrived: not counted (grpcio's unary path never showed it)
                await _fail(self.core.metrics, call, context, exc, start)
                raise  # only reached for cancellation / an abort already sent
            finally:
                if taken:
                    budget.give(taken)
                self.core.call_finished()
            record(self.core.metrics, call, grpc.StatusCode.OK, time.perf_counter() - start)
            if traced is not None:
                end_span(tracer, traced, call, None)
            return response

        return wrapper

    return decorate


def stream(api: str) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    """Decorate ``async def method(self, request_or_iterator, context, call)`` async generators.

    Errors that end the whole stream go through the same mapping; per-message errors are the
    servicer's business (see ``status_of``).
    """

    def decorate(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
            call = CallInfo(api)
            start = time.perf_counter()
            tracer = self.core.tracer
            traced = None if tracer is None else tracer.begin(api, context.invocation_metadata())  # TRACING HOOK
            self.core.call_started(context, stream=True)
            budget, taken = self.core.request_bytes, deque()
            try:
                if isinstance(request, UndecodableRequest):
                    raise request.error()
                if hasattr(request, "__aiter__"):  # a request stream: undecodable messages end it,
                    request = _until_draining(_decoded(request, budget, taken), self.core.drain_started)  # so does a drain
                async for item in method(self, request, context, call):
                    if taken:
                        budget.give(taken.popleft())
                    yield item
            except BaseException as exc:  # noqa: BLE001
                if traced is not None:
                    end_span(tracer, traced, call, exc, context)
                await _fail(self.core.metrics, call, context, exc, start)
                raise
            finally:
                while taken:
                    budget.give(taken.popleft())
                self.core.call_finished()
            record(self.core.metrics, call, grpc.StatusCode.OK, time.perf_counter() - start)
            if traced is not None:
                end_span(tracer, traced, call, None)

        return wrapper

    return decorate
