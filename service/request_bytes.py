"""Bounded bytes of large requests in flight, checked before a request is parsed.

gRPC hands a unary request's bytes to the servicer before anything else is known about it; parsing
a 4 MiB message and decoding its strings costs the event loop 1-12 ms (non-ASCII text costs the
most) and holds a few copies of it in memory. ``RequestBytesBudget`` lets at most
``max_request_bytes_in_flight`` bytes of large requests (over ``SMALL_REQUEST_BYTES`` each) be
parsed and handled at once per process; a large request beyond that is refused RESOURCE_EXHAUSTED
before it is parsed, at the cost of the receive alone; a large message of a request stream waits
for room instead (its stream reads nothing more meanwhile). Small requests are never refused by it (the
legitimate single-text traffic stays out of the hostile requests' way), except on a connection that
keeps sending large requests past the budget, whose calls are refused before they are even read
(``refuse_before_reading``), the refusal answered after a short delay (``hold_refusal``); a large request is always taken when no other large one is in flight,
so every legal request runs on an idle server (docs/reliability.md "Bounded work before admission").
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from service.errors import ResourceExhausted

SMALL_REQUEST_BYTES = 64 * 1024
REFUSED_PEER_SECONDS = 1.0  # how long a connection's refused large requests are held against its next calls
MAX_REFUSED_PEERS = 4096  # connections remembered at once (the oldest are forgotten first)
MAX_HELD_REFUSALS = 64  # refusals before reading held for ``refuse_unread_delay`` at once; the rest answered at once


class RequestBytesBudget:
    """Used from the event loop only (no lock)."""

    def __init__(self, limit: int, refuse_unread_after: int = 2, refuse_unread_delay: float = 0.0) -> None:
        self.limit = limit  # 0: no budget
        # refused large requests of one connection, each within REFUSED_PEER_SECONDS of the one before,
        # after which its calls are refused unread (0: never)
        self.refuse_unread_after = refuse_unread_after
        self.refuse_unread_delay = refuse_unread_delay  # seconds a refusal before reading is held (0: none)
        self.held_refusals = 0
        self.in_flight = 0
        self.waiting = 0  # stream messages waiting for room
        self._freed: asyncio.Event | None = None  # created on the loop by the first waiter
        self._none_in_flight = asyncio.Event()
        self._none_in_flight.set()
        # connection (gRPC peer) -> (when, bytes, strikes) of its last large request refused by the budget
        self._refused_peers: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    async def wait_none_in_flight(self) -> None:
        """Return once no large request is in flight (at once when none is)."""
        if self.in_flight:
            await self._none_in_flight.wait()

    def _fits(self, size: int) -> bool:
        return not self.in_flight or self.in_flight + size <= self.limit

    def take(self, size: int, peer: Callable[[], str] | None = None) -> int:
        """Count ``size`` bytes in flight or refuse at once; returns what ``give`` must hand back.
        ``peer``: the caller's connection, remembered when its request is refused
        (``refuse_before_reading``)."""
        if not self.limit or size <= SMALL_REQUEST_BYTES:
            return 0
        if not self._fits(size):
            if peer is not None and self.refuse_unread_after > 0:
                self._remember_refused(peer(), size)
            raise ResourceExhausted(
                f"too many large requests in flight ({self.in_flight} bytes, this one {size}, limit "
                f"max_request_bytes_in_flight={self.limit}); retry later")
        self.in_flight += size
        self._none_in_flight.clear()
        return size

    def _remember_refused(self, peer: str, size: int) -> None:
        now = time.monotonic()
        when, _, strikes = self._refused_peers.get(peer, (float("-inf"), 0, 0))
        strikes = strikes + 1 if now - when < REFUSED_PEER_SECONDS else 1
        self._refused_peers[peer] = (now, size, strikes)
        self._refused_peers.move_to_end(peer)
        while len(self._refused_peers) > MAX_REFUSED_PEERS:
            self._refused_peers.popitem(last=False)

    def refuse_before_reading(self, peer: Callable[[], str]) -> None:
        """Refuse a unary call before its message is read when its connection keeps sending large
        requests past the budget (``refuse_unread_after`` refused, each less than
        ``REFUSED_PEER_SECONDS`` after the one before, the last one that recently) and a request of
        the last one's size still would not fit. Receiving a large message costs the event loop
        milliseconds even when it is refused unparsed (docs/reliability.md "Seventh pass"); such a
        client is answered without that cost. Connections without refused large requests are never
        looked at."""
        if not self._refused_peers:
            return
        address = peer()
        entry = self._refused_peers.get(address)
        if entry is None:
            return
        when, size, strikes = entry
        if time.monotonic() - when >= REFUSED_PEER_SECONDS:
            del self._refused_peers[address]
            return
        if strikes >= self.refuse_unread_after and not self._fits(size):
            raise ResourceExhausted(
                f"this connection keeps sending large requests past the budget (the last, {size} bytes, "
                f"less than {REFUSED_PEER_SECONDS:g} s ago) and one would still not fit ({self.in_flight} bytes "
                f"in flight, limit max_request_bytes_in_flight={self.limit}); refused before it was read, retry later")

    async def hold_refusal(self) -> None:
        """Wait ``refuse_unread_delay`` before a refusal of ``refuse_before_reading`` is answered. Answered
        at once, such a client comes straight back: a closed-loop sender of large requests made the
        server take ~270 calls/s (RST, handler, answer) and two more gRPC core threads' worth of work;
        held, it comes back at most once per delay per open call (docs/reliability.md "Eighth pass").
        At most ``MAX_HELD_REFUSALS`` wait at once (each is an open call), the rest are answered at once."""
        if self.refuse_unread_delay <= 0 or self.held_refusals >= MAX_HELD_REFUSALS:
            return
        self.held_refusals += 1
        try:
            await asyncio.sleep(self.refuse_unread_delay)
        finally:
            self.held_refusals -= 1

    async def take_when_free(self, size: int) -> int:
        """``take`` for a message of a request stream: wait until it fits instead of refusing it
        (the stream reads nothing more meanwhile; its client's deadline still applies)."""
        if not self.limit or size <= SMALL_REQUEST_BYTES:
            return 0
        self.waiting += 1
        try:
            while not self._fits(size):
                if self._freed is None:
                    self._freed = asyncio.Event()
                self._freed.clear()
                await self._freed.wait()
        finally:
            self.waiting -= 1
        self.in_flight += size
        self._none_in_flight.clear()
        return size

    def give(self, size: int) -> None:
        self.in_flight -= size
        if not self.in_flight:
            self._none_in_flight.set()
        if size and self._freed is not None:
            self._freed.set()
