"""A loopback TCP proxy in front of a gRPC server that breaks calls mid-response, deterministically.

It reads the server's HTTP/2 frames and, for the next ``faults`` calls, forwards a call's response
HEADERS (so the client has begun receiving: the call is committed and gRPC's own retry policy no
longer applies) and then either

* ``"rst_stream"``: sends the client an RST_STREAM (INTERNAL_ERROR) for that stream and drops the
  rest of its DATA, as nginx does when its upstream replica dies mid-response (the client sees
  INTERNAL "Received RST_STREAM with error code 2"), or
* ``"connection_reset"``: resets the client's TCP connection (the client sees UNAVAILABLE).

Client-to-server bytes pass through unchanged. Loopback only.
"""
from __future__ import annotations

import socket
import struct
import threading
from typing import Literal

DATA, HEADERS, RST_STREAM = 0x0, 0x1, 0x3
INTERNAL_ERROR = 0x2
Mode = Literal["rst_stream", "connection_reset"]


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class ResetProxy:
    def __init__(self, upstream: str, mode: Mode, faults: int = 1) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.mode = mode
        self.faults = faults
        self.injected = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="reset-proxy").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _take_fault(self) -> bool:
        with self._lock:
            if self.injected >= self.faults:
                return False
            self.injected += 1
            return True

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            upward = threading.Thread(target=self._pipe, args=(client, server), daemon=True)
            upward.start()
            threading.Thread(target=self._frames, args=(server, client, upward), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        """Client -> server; the ``_frames`` thread owns (and closes) the client socket."""
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                target.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _frames(self, server: socket.socket, client: socket.socket, upward: threading.Thread) -> None:
        """Server -> client, frame by frame (the server side of HTTP/2 starts with frames)."""
        broken: set[int] = set()
        answered: set[int] = set()  # streams whose response headers went out
        try:
            while (header := _read_exactly(server, 9)) is not None:
                length = int.from_bytes(header[:3], "big")
                kind, stream = header[3], struct.unpack(">I", header[5:9])[0] & 0x7FFFFFFF
                payload = _read_exactly(server, length) if length else b""
                if payload is None:
                    break
                if stream in broken and kind == DATA:
                    continue  # the answer of a reset stream never reaches the client (header
                    # blocks still do: they carry HPACK table updates the connection needs)
                client.sendall(header + payload)
                first_headers = kind == HEADERS and stream and stream not in answered
                if first_headers:
                    answered.add(stream)
                if first_headers and self._take_fault():
                    if self.mode == "connection_reset":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        client.shutdown(socket.SHUT_RD)  # wakes the client -> server thread
                        upward.join(5)
                        client.close()  # with SO_LINGER 0: a TCP RST
                        return
                    broken.add(stream)
                    client.sendall(struct.pack(">I", 4)[1:] + bytes([RST_STREAM, 0])
                                   + struct.pack(">I", stream) + struct.pack(">I", INTERNAL_ERROR))
        except OSError:
            pass
        finally:
            for sock in (server, client):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
