"""Helpers for bidirectional streaming servicers (shared by textclf.v1 and KServe v2)."""
from __future__ import annotations

import asyncio


async def ordered_concurrently(messages, handle, max_in_flight: int):
    """Run ``handle`` on each message concurrently (at most ``max_in_flight`` at once) and yield
    the answers in message order. Cancelling the consumer cancels every outstanding handler.

    No message is read while an answer is being written: the consumer (gRPC) resumes this
    generator only once its last answer was written, which waits on HTTP/2 flow control, so a
    client that stops reading its answers stops this stream's reading as soon as its window is
    full, instead of ``max_in_flight`` more messages (work whose answers nobody reads)."""
    pending: asyncio.Queue = asyncio.Queue(maxsize=max_in_flight)
    done = object()
    tasks: set[asyncio.Task] = set()
    not_writing = asyncio.Event()
    not_writing.set()

    failures: list[Exception] = []

    async def read() -> None:
        try:
            iterator = messages.__aiter__()
            while True:
                await not_writing.wait()
                try:
                    message = await iterator.__anext__()
                except StopAsyncIteration:
                    break
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
                answer = await task
            finally:
                tasks.discard(task)
            not_writing.clear()
            try:
                yield answer
            finally:
                not_writing.set()
        if failures:
            raise failures[0]
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
