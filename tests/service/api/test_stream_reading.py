"""A stream whose answers are not consumed stops being read (service/api/streams.py): gRPC
resumes the servicer's generator only once its last answer was written (HTTP/2 flow control), so
while an answer is held, no further message may be read. Deterministic: asyncio steps, no timing."""
from __future__ import annotations

import asyncio

from service.api.streams import ordered_concurrently

MAX_IN_FLIGHT = 8


async def _steps(count: int = 50) -> None:
    """Let every ready task run ``count`` scheduling steps (nothing waits on time)."""
    for _ in range(count):
        await asyncio.sleep(0)


def test_no_message_is_read_while_an_answer_is_being_written() -> None:
    """Messages arrive one by one (as uploads do) and are answered at once; once the consumer
    holds an answer (its write waits for a client that does not read), later messages are not
    read, however many the client sends; they are read, in order, when the write completes."""
    async def scenario() -> None:
        sent: asyncio.Queue[int] = asyncio.Queue()
        read: list[int] = []

        async def messages():
            while (message := await sent.get()) >= 0:
                read.append(message)
                yield message

        async def handle(message: int) -> int:
            return message * 10

        answers = ordered_concurrently(messages(), handle, MAX_IN_FLIGHT)
        sent.put_nowait(0)
        assert await answers.__anext__() == 0  # the consumer holds answer 0: "being written"
        for i in range(1, 40):
            sent.put_nowait(i)
        await _steps()
        # at most the one message whose read had begun; without the rule, max_in_flight + 1 more
        assert read in ([0], [0, 1]), read
        sent.put_nowait(-1)
        got = [0] + [answer async for answer in answers]  # the client reads again: everything, in order
        assert got == [i * 10 for i in range(40)]

    asyncio.run(scenario())


def test_reading_goes_on_while_answers_are_computed() -> None:
    """Pipelining is kept: while no answer is written, up to ``max_in_flight`` messages are read
    and handled concurrently."""
    async def scenario() -> None:
        release = asyncio.Event()
        started: list[int] = []

        async def messages():
            for i in range(20):
                yield i

        async def handle(message: int) -> int:
            started.append(message)
            await release.wait()
            return message

        answers = ordered_concurrently(messages(), handle, MAX_IN_FLIGHT)
        first = asyncio.ensure_future(answers.__anext__())
        await _steps()
        # the one awaited, max_in_flight queued behind it, one waiting to enter the queue
        assert len(started) == MAX_IN_FLIGHT + 2
        release.set()
        assert await first == 0
        assert [answer async for answer in answers] == list(range(1, 20))

    asyncio.run(scenario())
