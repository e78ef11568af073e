"""Bounded bytes of large requests in flight, checked before a request is parsed.

gRPC hands a unary request's bytes to the servicer before anything else is known about it; parsing
a 4 MiB message and decoding its strings costs the event loop 1-12 ms (non-ASCII text costs the
most) and holds a few copies of it in memory. ``RequestBytesBudget`` lets at most
``max_request_bytes_in_flight`` bytes of large requests (over ``SMALL_REQUEST_BYTES`` each) be
parsed and handled at once per process; a large request beyond that is refused RESOURCE_EXHAUSTED
before it is parsed, at the cost of the receive alone; a large message of a request stream waits
for room instead (its stream reads nothing more meanwhile). Small requests are never refused by it (the
legitimate single-text traffic stays out of the hostile requests' way), and a large request is
always taken when no other large one is in flight, so every legal request runs on an idle server
(docs/reliability.md "Bounded work before admission").
"""
from __future__ import annotations

import asyncio

from service.errors import ResourceExhausted

SMALL_REQUEST_BYTES = 64 * 1024


class RequestBytesBudget:
    """Used from the event loop only (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no budget
        self.in_flight = 0
        self.waiting = 0  # stream messages waiting for room
        self._freed: asyncio.Event | None = None  # created on the loop by the first waiter
        self._none_in_flight = asyncio.Event()
        self._none_in_flight.set()

    async def wait_none_in_flight(self) -> None:
        """Return once no large request is in flight (at once when none is)."""
        if self.in_flight:
            await self._none_in_flight.wait()

    def _fits(self, size: int) -> bool:
        return not self.in_flight or self.in_flight + size <= self.limit

    def take(self, size: int) -> int:
        """Count ``size`` bytes in flight or refuse at once; returns what ``give`` must hand back."""
        if not self.limit or size <= SMALL_REQUEST_BYTES:
            return 0
        if not self._fits(size):
            raise ResourceExhausted(
                f"too many large requests in flight ({self.in_flight} bytes, this one {size}, limit "
                f"max_request_bytes_in_flight={self.limit}); retry later")
        self.in_flight += size
        self._none_in_flight.clear()
        return size

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
