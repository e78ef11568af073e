"""Schedulers: how texts of concurrent requests reach onnxruntime.

``DynamicBatcher`` (batching on) keeps one bounded queue of texts per model version and one
scheduler task that forms batches:

* admission first: a request's texts are admitted all together or not at all, before they are
  tokenized; beyond ``max_queue_size`` waiting texts (queued, or admitted and still being
  tokenized) the request fails fast with RESOURCE_EXHAUSTED;
* admission by cost as well: beyond ``max_queue_tokens`` waiting tokens the request fails fast
  with RESOURCE_EXHAUSTED too, so the admitted work is bounded in compute time, not only in texts.
  A text costs its token count (at least ``SHORT_FLOOR``), known at once for small requests
  (tokenized on the event loop) and counted as ``max_len`` while a large request is in the
  tokenizer pool (then corrected). Requests costing over 1/16 of the budget may fill only 3/4 of
  it (the rest stays open to small requests); a request costing more than the whole budget is
  admitted only alone (when no other token waits), so every legal request can run on an idle server;
* tokenization: with the version's own tokenizer (``submit`` takes raw texts, so the ids always
  come from the tokenizer of the model that computes them), on the event loop for small
  requests and on the bounded tokenizer pool otherwise; ids stay ragged until a batch is padded;
* a batch starts as soon as the worker is free and either ``max_batch_size`` texts wait or the
  oldest text has waited ``max_queue_delay`` (0 = greedy: under load, batches fill with the texts
  that arrived while the previous batch computed; an idle server adds no delay);
* grouping by length: the anchor text starts the batch, and other texts join only while the
  batch's longest/shortest token count stays within ``length_bucket_ratio`` (lengths under
  ``SHORT_FLOOR`` count as ``SHORT_FLOOR``), so short texts do not pay for long texts' padding;
* bounded batches: at most ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens (texts x
  the longest), so one onnxruntime call lasts a bounded time (32 ms for the default model at 8192:
  bench/results/ort_batch_sweep.json) and a request of many long texts is computed in slices;
* fairness between requests (docs/service.md "Batching design"): the anchor is the oldest waiting text
  (FIFO) unless a request has already had texts computed (it is being sliced); then batches
  alternate between the oldest text and the text of the request with the fewest tokens computed
  so far (new requests first), filled in that order. A small request arriving behind a large
  one waits for at most one slice, and the large one still gets every other batch;
* texts whose request passed its deadline or was cancelled by the client are dropped right before
  compute and counted in ``textclf_dropped_texts``;
* the lone-request fast path: with ``max_queue_delay`` 0, a small request (at most
  ``INLINE_TOKENIZE_CHARS`` characters) submitted ``alone`` (the only RPC the server has open,
  ``InferenceCore``) while nothing of its version is queued, being tokenized or computing is
  admitted, tokenized and computed right there on the event loop as a batch of its own: no
  scheduler task wake-up, no thread hand-off (docs/benchmarks.md "The request path"). Admission,
  the deadline check before compute and the metrics are the same as on the queued path. Under
  concurrency requests take the queued path, so the event loop keeps serving calls while
  onnxruntime computes the batch on its own thread (``InferencePool.run_batch``: no Python thread
  has to take the GIL from the event loop before the batch can start).

``DirectScheduler`` (batching off) runs every request alone (its own texts form one batch), with
the same admission bounds (its texts are tokenized in the job, so they count ``max_len`` tokens
each against ``max_queue_tokens``) and the same drop-before-compute rule.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bundle.tokenization import EncodedText
from service.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable
from service.inference_pool import InferencePool
from service.metrics import ServiceMetrics
from service.runtime import ModelRuntime
from service.tracing import StageTimes

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

SHORT_FLOOR = 8
# Requests with at most this many characters are tokenized on the event loop (tens to hundreds of
# microseconds); bigger ones go to the tokenizer pool so the loop never stalls. The lone-request
# fast path computes only such requests on the loop (a few ms of onnxruntime at most for the
# default model; a call arriving meanwhile waits that long, then takes the queued path).
INLINE_TOKENIZE_CHARS = 2048
# Requests costing over 1/SMALL_SHARE of max_queue_tokens are "large": they may fill only
# LARGE_FILL of it; the rest is kept for small requests (a legitimate single text among hostile
# 64-text requests of max_len tokens each is never locked out by them).
SMALL_SHARE = 16
LARGE_FILL = 0.75


class TokenizerPool:
    """The threads that tokenize requests too large to tokenize on the event loop, shared by all
    models. Bounded in threads and in backlog: at most ``max_texts`` texts queued for or in the
    threads (a request arriving when the pool is idle is always taken), beyond that a request
    gets RESOURCE_EXHAUSTED at once, so no request waits long for a tokenizer. Used from the
    event loop only."""

    def __init__(self, workers: int, max_texts: int) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
        barrier = threading.Barrier(workers)
        for _ in range(workers):  # start every thread now: the thread count never changes under load
            self.executor.submit(barrier.wait, 10)
        self.max_texts = max_texts
        self.texts = 0

    def reserve(self, count: int) -> None:
        if self.texts and self.texts + count > self.max_texts:
            raise ResourceExhausted(f"the tokenizer is busy ({self.texts} texts waiting, limit {self.max_texts}); "
                                    "retry later")
        self.texts += count

    def release(self, count: int) -> None:
        self.texts -= count

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


class SchedulerClosed(Unavailable):
    """The model version stopped taking work (it is being unloaded); the caller may re-resolve."""


class Scheduler(Protocol):
    def start(self) -> None: ...
    async def submit(self, texts: Sequence[str], deadline: float | None, tokenizer_pool: TokenizerPool,
                     stages: StageTimes | None = None, alone: bool = False) -> tuple[np.ndarray, list[EncodedText]]: ...
    async def close(self) -> None: ...
    @property
    def queue_depth(self) -> int: ...


@dataclass(eq=False)
class _Request:
    """One caller's texts; its future resolves to (N, C) probabilities once every row is computed."""

    future: asyncio.Future
    results: np.ndarray
    deadline: float | None
    remaining: int
    enqueued: float = field(default_factory=time.monotonic)
    served: int = 0  # padded tokens of this request taken into batches so far (the fairness order)
    stages: StageTimes | None = None  # TRACING HOOK: recorded only when the request is traced

    @property
    def finished(self) -> bool:
        return self.future.done()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def deliver(self, row: int, probabilities: np.ndarray) -> None:
        if self.future.done():
            return
        self.results[row] = probabilities
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(eq=False)
class _Item:
    request: _Request
    row: int
    ids: np.ndarray

    @property
    def bucket_length(self) -> int:
        return max(int(self.ids.shape[0]), SHORT_FLOOR)


def _cost(encoded: Sequence[EncodedText]) -> int:
    """Tokens a request's texts count against ``max_queue_tokens`` (what their batch rows cost)."""
    return sum(max(len(text.ids), SHORT_FLOOR) for text in encoded)


def _deadline_error() -> DeadlineExceeded:
    return DeadlineExceeded("deadline exceeded before the texts were computed")


class _Base:
    def __init__(self, runtime: ModelRuntime, pool: InferencePool, metrics: ServiceMetrics,
                 model: str, version: int, *, max_queue_size: int, max_queue_tokens: int) -> None:
        self.runtime = runtime
        self.pool = pool
        self.metrics = metrics
        self.model, self.version = model, str(version)
        self.max_queue_size = max_queue_size
        self.max_queue_tokens = max_queue_tokens
        self._closed = False
        self._tokenizing = 0  # texts admitted and not yet queued (being tokenized)
        # this version's metric children, looked up once (a labels() look-up per call costs a lock)
        self._queue_seconds = metrics.queue_seconds.labels(model, self.version)
        self._batch_size = metrics.batch_size.labels(model, self.version)
        self._inference_seconds = metrics.inference_seconds.labels(model, self.version)
        self._queue_depth = metrics.queue_depth.labels(model, self.version)
        self._tokens = 0  # tokens admitted and not yet computed (max_len a text while it is tokenized)

    @property
    def queued_tokens(self) -> int:
        return self._tokens

    def _upper_bound_tokens(self, count: int) -> int:
        return count * max(int(self.runtime.encoder.max_len), SHORT_FLOOR)

    def _admit_tokens(self, count: int, tokens: int) -> None:
        """Take ``tokens`` of the ``max_queue_tokens`` budget or refuse at once. Large requests
        (over ``1/SMALL_SHARE`` of the budget) may fill only ``LARGE_FILL`` of it, so a few of them
        never lock small requests out; a request costing more than the whole budget is taken
        only when nothing else waits (admitted alone)."""
        limit = self.max_queue_tokens
        if tokens * SMALL_SHARE > limit:
            limit = int(limit * LARGE_FILL)
        if self._tokens and self._tokens + tokens > limit:
            self.metrics.rejected.labels(self.model, self.version).inc(count)
            raise ResourceExhausted(
                f"model {self.model} queue is full ({self._tokens} tokens waiting, this request {tokens}, "
                f"limit {limit} of max_queue_tokens={self.max_queue_tokens}); retry later")
        self._tokens += tokens

    def _admit(self, waiting: int, count: int) -> None:
        if self._closed:
            raise SchedulerClosed(f"model {self.model} version {self.version} is being unloaded")
        if waiting + count > self.max_queue_size:
            self.metrics.rejected.labels(self.model, self.version).inc(count)
            raise ResourceExhausted(
                f"model {self.model} queue is full ({waiting} texts waiting, limit {self.max_queue_size}); retry later")

    async def _admit_and_tokenize(self, texts: Sequence[str], waiting: int,
                                  tokenizers: TokenizerPool) -> list[EncodedText]:
        """Admit ``texts`` (they count against ``max_queue_size`` from now on), then tokenize them
        with this version's tokenizer. A caller cancelled while its texts are in the tokenizer
        pool leaves their slots taken until that work ends (a thread cannot be stopped)."""
        count = len(texts)
        self._admit(waiting + self._tokenizing, count)
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            encoded = self.runtime.encode(texts)
            self._admit_tokens(count, _cost(encoded))
            return encoded
        reserved = self._upper_bound_tokens(count)
        self._admit_tokens(count, reserved)
        try:
            tokenizers.reserve(count)
        except ResourceExhausted:
            self._tokens -= reserved
            self.metrics.rejected.labels(self.model, self.version).inc(count)
            raise
        self._tokenizing += count
        work = asyncio.get_running_loop().run_in_executor(tokenizers.executor, self.runtime.encode, texts)
        try:
            encoded = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(lambda done: self._tokenized(tokenizers, count, reserved, done))
            raise
        except BaseException:
            self._tokenized(tokenizers, count, reserved)
            raise
        self._tokenized(tokenizers, count, reserved)
        self._tokens += _cost(encoded)  # the exact cost replaces the reservation, queued right away
        return encoded

    def _tokenized(self, tokenizers: TokenizerPool, count: int, reserved: int, work: asyncio.Future | None = None) -> None:
        tokenizers.release(count)
        self._tokenizing -= count
        self._tokens -= reserved
        if work is not None and not work.cancelled():
            work.exception()  # nobody awaits it any more: mark it retrieved
        self._tokenizing_done()

    def _tokenizing_done(self) -> None:
        """Hook: a scheduler that waits for admitted texts on close wakes up here."""

    def _drop(self, count: int, reason: str) -> None:
        self.metrics.dropped.labels(self.model, self.version, reason).inc(count)

    def _new_request(self, count: int, deadline: float | None) -> _Request:
        future = asyncio.get_running_loop().create_future()
        results = np.empty((count, self.runtime.num_labels), dtype=np.float32)
        return _Request(future=future, results=results, deadline=deadline, remaining=count)

    def _observe_queued(self, seconds: float, texts: int = 1) -> None:
        for _ in range(texts):
            self._queue_seconds.observe(seconds)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._inference_seconds.observe(seconds)


class DynamicBatcher(_Base):
    def __init__(self, runtime: ModelRuntime, pool: InferencePool, metrics: ServiceMetrics,
                 model: str, version: int, *, max_batch_size: int, max_queue_delay: float, max_queue_size: int,
                 max_queue_tokens: int, length_bucket_ratio: float, max_batch_tokens: int = 0) -> None:
        super().__init__(runtime, pool, metrics, model, version, max_queue_size=max_queue_size,
                         max_queue_tokens=max_queue_tokens)
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.length_bucket_ratio = length_bucket_ratio
        self.max_batch_tokens = max_batch_tokens or None  # 0: no cap
        self._pending: list[_Item] = []
        self._owed_fifo = False  # the last batch was anchored by the fairness order: the oldest text is next
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._computing = False  # a batch is computing (InferencePool.run_batch)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever(), name=f"batcher-{self.model}")

    async def submit(self, texts: Sequence[str], deadline: float | None, tokenizer_pool: TokenizerPool,
                     stages: StageTimes | None = None, alone: bool = False) -> tuple[np.ndarray, list[EncodedText]]:
        if alone and stages is None and self._idle_for(texts):  # traced requests take the queued path (its stages)
            return self._run_alone(texts, deadline)
        if stages is None:
            encoded = await self._admit_and_tokenize(texts, len(self._pending), tokenizer_pool)
        else:  # TRACING HOOK: admission and tokenization timed
            begin = time.monotonic()
            encoded = await self._admit_and_tokenize(texts, len(self._pending), tokenizer_pool)
            stages.tokenize = (begin, time.monotonic())
        request = self._new_request(len(encoded), deadline)
        if stages is not None:  # TRACING HOOK
            request.stages, stages.enqueued = stages, request.enqueued
        self._pending.extend(_Item(request, row, text.ids) for row, text in enumerate(encoded))
        self._set_depth()
        self._wakeup.set()
        try:
            return await asyncio.shield(request.future), encoded
        except asyncio.CancelledError:
            # its queued texts are dropped before compute, counted under the right reason
            if request.expired(time.monotonic()):
                request.fail(_deadline_error())
                request.future.exception()  # mark retrieved: nobody awaits it any more
            else:
                request.future.cancel()
            self._wakeup.set()  # let the scheduler free the queue slots now
            raise

    def _idle_for(self, texts: Sequence[str]) -> bool:
        """The fast path's condition: greedy batching, nothing of this version waiting, being
        tokenized or computing, and a request small enough to compute on the event loop."""
        if self.max_queue_delay > 0 or self._pending or self._computing or self._tokenizing:
            return False
        chars = 0
        for text in texts:
            chars += len(text)
            if chars > INLINE_TOKENIZE_CHARS:
                return False
        return True

    def _run_alone(self, texts: Sequence[str], deadline: float | None) -> tuple[np.ndarray, list[EncodedText]]:
        """Admit, tokenize and compute ``texts`` now, on the event loop, as one batch (no await:
        nothing can join, cancel or close the version in between)."""
        count = len(texts)
        self._admit(0, count)
        encoded = self.runtime.encode(texts)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            self._drop(count, "deadline")
            raise _deadline_error()
        self._observe_queued(0.0, count)
        start = time.perf_counter()
        try:
            probabilities = self.runtime.run([t.ids for t in encoded])
        except Exception:
            logger.exception("inference failed for model %s version %s (batch of %d)", self.model, self.version, count)
            raise Internal() from None
        self._observe_batch(count, time.perf_counter() - start)
        return probabilities, encoded

    def _tokenizing_done(self) -> None:
        if self._closed:
            self._wakeup.set()

    async def close(self) -> None:
        """Stop admitting, finish every admitted text (also those still being tokenized), then end
        the scheduler task."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    def _dequeued(self, items: Sequence[_Item]) -> None:
        """``items`` left the queue (computed now, dropped or failed): their tokens free budget."""
        self._tokens -= sum(item.bucket_length for item in items)

    def _set_depth(self) -> None:
        self._queue_depth.set(len(self._pending))

    async def _run_forever(self) -> None:
        while True:
            try:
                if not self._pending:
                    if self._closed and not self._tokenizing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._wait_for_batch()
                batch = self._take_batch()
                if batch:
                    await self._compute(batch)
            except Exception:  # a bug here must fail the waiting callers, never leave them hanging
                logger.exception("batcher of model %s version %s failed; failing its %d queued text(s)",
                                 self.model, self.version, len(self._pending))
                self._fail_pending(Internal())

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        self._dequeued(pending)
        for item in pending:
            item.request.fail(error)
        self._set_depth()

    async def _wait_for_batch(self) -> None:
        if self.max_queue_delay <= 0:
            return
        oldest = self._pending[0].request.enqueued
        while len(self._pending) < self.max_batch_size and not self._closed and not self._fills_a_batch():
            remaining = oldest + self.max_queue_delay - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            self._prune(time.monotonic())
            if not self._pending:
                return
            oldest = self._pending[0].request.enqueued

    def _fills_a_batch(self) -> bool:
        """The waiting texts already fill ``max_batch_tokens`` (waiting longer cannot grow the batch)."""
        return self.max_batch_tokens is not None and sum(i.bucket_length for i in self._pending) >= self.max_batch_tokens

    def _prune(self, now: float) -> None:
        """Drop texts of requests that were cancelled, failed or passed their deadline."""
        if not any(item.request.finished or item.request.expired(now) for item in self._pending):
            return
        live: list[_Item] = []
        for item in self._pending:
            request = item.request
            if not request.finished and request.expired(now):
                request.fail(_deadline_error())
            if request.finished:
                self._drop(1, "cancelled" if request.future.cancelled() else "deadline")
                self._dequeued((item,))
                continue
            live.append(item)
        self._pending = live

    def _take_batch(self) -> list[_Item]:
        now = time.monotonic()
        self._prune(now)
        if not self._pending:
            self._set_depth()
            return []
        candidates = self._candidates()
        batch: list[_Item] = []
        rest: list[_Item] = []
        low = high = 0
        cap = self.max_batch_tokens
        for item in candidates:
            length = item.bucket_length
            if not batch:
                batch.append(item)
                low = high = length
                continue
            new_low, new_high = min(low, length), max(high, length)
            if (len(batch) < self.max_batch_size and new_high <= new_low * self.length_bucket_ratio
                    and (cap is None or (len(batch) + 1) * new_high <= cap)):
                batch.append(item)
                low, high = new_low, new_high
            else:
                rest.append(item)
        if candidates is not self._pending:  # the queue stays in arrival order
            chosen = set(batch)
            rest = [item for item in self._pending if item not in chosen]
        self._pending = rest
        self._dequeued(batch)
        self._set_depth()
        for item in batch:
            item.request.served += item.bucket_length
            self._observe_queued(now - item.request.enqueued)
            if item.request.stages is not None and item.request.stages.dequeued is None:  # TRACING HOOK
                item.request.stages.dequeued = now
        return batch

    def _candidates(self) -> list[_Item]:
        """The waiting texts in the order the next batch takes them: arrival order (the oldest
        anchors) unless the oldest text's request is being sliced (it already had texts computed)
        and another request has had fewer tokens computed; then every other batch takes them in
        the order of tokens computed per request (ties: arrival order)."""
        oldest = self._pending[0]
        if not oldest.request.served:  # nobody is being sliced ahead of anyone (the common case)
            self._owed_fifo = False
            return self._pending
        fairest = min(self._pending, key=lambda item: item.request.served)
        if fairest.request is oldest.request or self._owed_fifo:
            self._owed_fifo = False
            return self._pending
        self._owed_fifo = True
        return sorted(self._pending, key=lambda item: item.request.served)

    async def _compute(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        self._computing = True
        try:
            probabilities = await self.pool.run_batch(self.runtime, [i.ids for i in batch])
        except Exception:
            logger.exception("inference failed for model %s version %s (batch of %d)", self.model, self.version,
                             len(batch))
            for item in batch:
                item.request.fail(Internal())
            return
        finally:
            self._computing = False
        seconds = time.perf_counter() - start
        self._observe_batch(len(batch), seconds)
        end = None
        for row, item in enumerate(batch):
            if item.request.stages is not None:  # TRACING HOOK
                end = end or time.monotonic()
                item.request.stages.batch(end - seconds, end, len(batch))
            item.request.deliver(item.row, probabilities[row])


class DirectScheduler(_Base):
    """Batching off: each request's texts run as their own onnxruntime call."""

    def __init__(self, runtime: ModelRuntime, pool: InferencePool, metrics: ServiceMetrics,
                 model: str, version: int, *, max_queue_size: int, max_queue_tokens: int) -> None:
        super().__init__(runtime, pool, metrics, model, version, max_queue_size=max_queue_size,
                         max_queue_tokens=max_queue_tokens)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    def start(self) -> None:
        pass

    async def submit(self, texts: Sequence[str], deadline: float | None, tokenizer_pool: TokenizerPool,
                     stages: StageTimes | None = None, alone: bool = False) -> tuple[np.ndarray, list[EncodedText]]:
        """Admitted, then tokenized and computed in one job on the inference thread pool (a request runs
        alone, so tokenizing it elsewhere would only add a thread hand-off)."""
        self._admit(self._in_flight, len(texts))
        tokens = self._upper_bound_tokens(len(texts))  # tokenized in the job: counted at max_len
        self._admit_tokens(len(texts), tokens)  # counts the tokens: _track below counts the texts only
        self._track(len(texts), 0)
        lock = threading.Lock()
        phase = ["queued"]  # queued -> running | cancelled | expired
        enqueued = time.monotonic()
        encoded: list[EncodedText] = []

        def job() -> np.ndarray | None:
            started = time.monotonic()
            with lock:
                if phase[0] == "cancelled":
                    return None
                phase[0] = "expired" if deadline is not None and started >= deadline else "running"
            self._observe_queued(started - enqueued)
            if phase[0] == "expired":
                self._drop(len(texts), "deadline")
                return None
            encoded.extend(self.runtime.encode(texts))
            begin = time.perf_counter()
            probabilities = self.runtime.run([t.ids for t in encoded])
            seconds = time.perf_counter() - begin
            self._observe_batch(len(encoded), seconds)
            if stages is not None:  # TRACING HOOK
                end = time.monotonic()
                stages.enqueued, stages.dequeued = enqueued, started
                stages.tokenize = (started, end - seconds)
                stages.batch(end - seconds, end, len(encoded))
            return probabilities

        loop = asyncio.get_running_loop()
        try:
            work = self.pool.executor.submit(job)
        except BaseException:
            self._track(-len(texts), -tokens)
            raise
        # the admission slot is held until the job itself is over: a caller that cancels while it
        # runs must not free room for more work than max_queue_size (submit-and-cancel)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._track, -len(texts), -tokens))
        try:
            probabilities = await asyncio.wrap_future(work, loop=loop)
        except asyncio.CancelledError:
            with lock:
                if phase[0] == "queued":
                    phase[0] = "cancelled"
                    self._drop(len(texts), "cancelled")
            raise
        except Exception:
            logger.exception("inference failed for model %s version %s", self.model, self.version)
            raise Internal() from None
        if probabilities is None:
            raise _deadline_error()
        return probabilities, encoded

    def _track(self, delta: int, tokens: int) -> None:
        self._in_flight += delta
        self._tokens += tokens
        self._queue_depth.set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def close(self) -> None:
        self._closed = True
        await self._idle.wait()


def make_scheduler(runtime: ModelRuntime, pool: InferencePool, metrics: ServiceMetrics,
                   model: str, version: int, settings: "Settings") -> Scheduler:
    if not settings.batching:
        return DirectScheduler(runtime, pool, metrics, model, version, max_queue_size=settings.max_queue_size,
                               max_queue_tokens=settings.max_queue_tokens)
    return DynamicBatcher(runtime, pool, metrics, model, version, max_batch_size=settings.max_batch_size,
                          max_queue_delay=settings.max_queue_delay, max_queue_size=settings.max_queue_size,
                          max_queue_tokens=settings.max_queue_tokens, length_bucket_ratio=settings.length_bucket_ratio,
                          max_batch_tokens=settings.max_batch_tokens)
