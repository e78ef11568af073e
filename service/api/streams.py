"""Helpers for bidirectional streaming servicers (shared by textclf.v1 and KServe v2)."""
from __future__ import annotations

import asyncio


async def ordered_concurrently(messages, handle, max_in_flight: int):
    """Run ``handle`` on each message concurrently (at most ``max_in_flight`` at once) and yield
    the answers in message order. Cancelling the consumer cancels every outstanding handler."""
    pending: asyncio.Queue = asyncio.Queue(maxsize=max_in_flight)
    done = object()
    tasks: set[asyncio.Task] = set()

    failures: list[Exception] = []

    async def read() -> None:
        try:
            async for message in messages:
                task = asyncio.ensure_future(handle(message))
                tasks.add(task)
                await pending.put(task)
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer, in order
            failures.append(exc)
        await pending.put(done)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            task = await pending.get()
            if task is done:
                break
            try:
                yield await task
            finally:
                tasks.discard(task)
        if failures:
            raise failures[0]
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
