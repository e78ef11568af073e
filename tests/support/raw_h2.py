"""A gRPC client written as bare HTTP/2 frames, for clients no library would be: it opens one
call, sends its messages, reads (and drops) whatever the server sends, and never closes its side
of the stream, not even after the server has ended the call; with ``answer_pings=False`` it does
not answer PINGs either, as a client that stopped reading would not."""
from __future__ import annotations

import socket
import struct
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING = 0x0, 0x1, 0x4, 0x6
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
STREAM = 1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, plain strings (both shorter than 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class StubbornStream:
    """One gRPC call on its own connection (``address``: host:port) that is never half-closed."""

    def __init__(self, address: str, method: str, *, answer_pings: bool = True) -> None:
        self.answer_pings = answer_pings
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        headers = b"".join(_literal(k, v) for k, v in ((":method", "POST"), (":scheme", "http"), (":path", method),
                                                       (":authority", address), ("content-type", "application/grpc"),
                                                       ("te", "trailers")))
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, b"") + _frame(HEADERS, END_HEADERS, STREAM, headers))
        self.server_ended_call = threading.Event()  # a HEADERS frame with END_STREAM: the trailers
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, message: bytes) -> None:
        """One length-prefixed gRPC message, without END_STREAM."""
        self.sock.sendall(_frame(DATA, 0, STREAM, b"\x00" + struct.pack(">I", len(message)) + message))

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                    if kind == SETTINGS and not flags & ACK:
                        self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
                    elif kind == PING and not flags & ACK and self.answer_pings:
                        self.sock.sendall(_frame(PING, ACK, 0, payload))
                    elif kind == HEADERS and stream == STREAM and flags & END_STREAM:
                        self.server_ended_call.set()
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
