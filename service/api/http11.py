"""A small HTTP/1.1 server on the service's own event loop (the KServe v2 REST API, service/api/rest.py).

Bounded whatever the clients do (docs/rest.md "Limits"):

* a request head (request line and headers) must arrive whole within ``idle_timeout`` seconds of
  the previous answer (or of the connection), at most ``HEAD_LIMIT`` bytes;
* the body is read only when ``Content-Length`` is at most ``max_body`` (else 413 and the
  connection closes, nothing read); chunked bodies and compressed bodies are refused;
* at most ``max_connections`` are open: a new connection closes the one that has been idle the
  longest (waiting for its next request), or is itself answered 503 when none is idle;
* keep-alive (HTTP/1.1 default; HTTP/1.0 with ``Connection: keep-alive``) until the server
  drains; requests on one connection are answered one after the other; ``Expect: 100-continue``
  is honoured.

``Handler(request) -> Response`` does the rest; it must not raise.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

logger = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
           429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    route: dict[str, str] = field(default_factory=dict)  # filled by the handler's router


@dataclass
class Response:
    status: int
    body: bytes = b""
    route: dict[str, str] = field(default_factory=dict)  # filled by the handler's router
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]
# called for requests refused before the handler ran (oversized, malformed): (request or None, response)
Refused = Callable[[Request | None, Response], None]


def json_error(status: int, message: str) -> Response:
    import json

    return Response(status, json.dumps({"error": message}).encode())


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class HTTPServer:
    def __init__(self, handler: Handler, *, max_body: int, max_connections: int, idle_timeout: float,
                 refused: Refused | None = None, draining: Callable[[], bool] = lambda: False) -> None:
        self.handler = handler
        self.draining = draining  # True: answers say Connection: close (clients reconnect elsewhere)
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.refused = refused or (lambda request, response: None)
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._idle: dict[asyncio.Task, None] = {}  # connections waiting for a request head, longest first
        self._connections: set[asyncio.Task] = set()
        self.port = 0

    async def bind(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind (not yet serving); returns the bound port."""
        self._server = await asyncio.start_server(self._connection, host, port, limit=HEAD_LIMIT, backlog=256,
                                                  reuse_port=reuse_port or None, start_serving=False)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def start(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    async def close(self) -> None:
        """Stop accepting, close idle connections; a connection busy with a request closes after
        its answer (which says ``Connection: close``)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._idle):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)

    # -- connections ---------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            if not self._idle:
                await self._send(writer, json_error(503, "too many open connections; retry later"), close=True)
                writer.close()
                return
            next(iter(self._idle)).cancel()  # the connection idle the longest
        self._connections.add(task)
        try:
            while not self.closing:
                self._idle[task] = None
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                finally:
                    self._idle.pop(task, None)
                keep_alive = await self._one_request(head, reader, writer)
                if not keep_alive:
                    break
        except (asyncio.CancelledError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.LimitOverrunError:
            await self._send(writer, json_error(400, f"request head larger than {HEAD_LIMIT} bytes"), close=True)
        finally:
            self._connections.discard(task)
            self._idle.pop(task, None)
            writer.close()

    async def _one_request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read the body, answer; True when the connection stays open."""
        try:
            request, keep_alive = self._parse_head(head)
            length = self._body_length(request)
        except _BadRequest as bad:
            self.refused(None, bad.response)
            await self._send(writer, bad.response, close=True)
            return False
        if length > self.max_body:
            response = json_error(413, f"request body of {length} bytes is larger than the limit of "
                                       f"{self.max_body} bytes (max_receive_message_bytes)")
            self.refused(request, response)
            await self._send(writer, response, close=True)
            return False
        if length:
            if request.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.body = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
        response = await self.handler(request)
        keep_alive = keep_alive and not self.closing and not self.draining()
        await self._send(writer, response, close=not keep_alive, head_only=request.method == "HEAD")
        return keep_alive

    @staticmethod
    def _parse_head(head: bytes) -> tuple[Request, bool]:
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(json_error(400, "malformed HTTP request line"))
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(json_error(400, "malformed HTTP header line"))
            name = name.lower()
            if name in headers and name in ("content-length", "transfer-encoding"):
                raise _BadRequest(json_error(400, f"header {name} given twice"))
            headers[name] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        try:
            path = unquote(target.split("?", 1)[0], errors="strict")
        except UnicodeDecodeError:
            raise _BadRequest(json_error(400, "the request path is not valid UTF-8")) from None
        return Request(method, path, headers), keep_alive

    @staticmethod
    def _body_length(request: Request) -> int:
        if "transfer-encoding" in request.headers:
            raise _BadRequest(json_error(411, "chunked request bodies are not supported: send Content-Length"))
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise _BadRequest(json_error(415, f"Content-Encoding {encoding[:32]!r} is not supported: send the body "
                                              "uncompressed"))
        raw = request.headers.get("content-length", "0")
        if not raw.isdigit() or len(raw) > 18:
            raise _BadRequest(json_error(400, "malformed Content-Length"))
        return int(raw)

    async def _send(self, writer: asyncio.StreamWriter, response: Response, *, close: bool,
                    head_only: bool = False) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
        head = (f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n{extra}"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n").encode("latin-1")
        try:
            writer.write(head if head_only else head + response.body)
            await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (ConnectionError, TimeoutError):
            pass
