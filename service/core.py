"""InferenceCore: the one object the API servicers talk to (docs/CONTRACTS.md).

Protocol-neutral: each API translates its message into a ``ClassifyRequest``, resolves the model
once (``resolve``) and calls ``classify(model, request)``. The core validates the texts (count
and size), hands the raw texts to the version's scheduler (which admits them, tokenizes them
with that version's tokenizer and batches them), keeps the per-version statistics and the text
metrics for every API, and returns a ``Classification``. It knows nothing about protobuf or gRPC
status codes: failures are ``service.errors.ServiceError``s.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from bundle.tokenization import EncodedText
from service.auth import ControlAuth
from service.batching import SchedulerClosed, TokenizerPool
from service.errors import InvalidArgument, Unavailable, Unimplemented
from service.metrics import ServiceMetrics
from service.repository import ModelRepository
from service.request_bytes import RequestBytesBudget
from service.settings import Settings
from service.statistics import InferenceStatistics
from service.tracing import RequestTracer, StageTimes
from service.types import Classification, ClassifyRequest, LoadedModel, ModelState

logger = logging.getLogger(__name__)


class InferenceCore:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self._started = False
        self._draining = False
        self.drain_started = asyncio.Event()  # open streams stop reading and end when it is set
        self._calls_in_flight = 0
        self._open_rpcs = 0  # RPCs from their handler's start until grpc ended them (answer sent)
        self._text_metrics: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._control = ControlAuth(settings.read_control_token())  # SettingsError: unreadable token file
        self.statistics = InferenceStatistics()
        self.tokenizer_pool = TokenizerPool(settings.tokenize_workers, settings.tokenize_max_backlog_texts)
        self.request_bytes = RequestBytesBudget(settings.max_request_bytes_in_flight,
                                                refuse_unread_after=settings.refuse_unread_after,
                                                refuse_unread_delay=settings.refuse_unread_delay_ms / 1000)
        self.tracer: RequestTracer | None = None  # TRACING HOOK: set by create_app when tracing is on

    # -- lifecycle ---------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._started and not self._draining

    def mark_started(self) -> None:
        self._started = True

    def start_draining(self) -> None:
        self._draining = True
        self.drain_started.set()

    def is_draining(self) -> bool:
        return self._draining

    def close(self) -> None:
        """After the server stopped: end the tokenizer threads."""
        self.tokenizer_pool.shutdown()

    @property
    def calls_in_flight(self) -> int:
        return self._calls_in_flight

    def call_started(self, context: Any = None, *, stream: bool = False) -> None:
        """Called by the API boundary for every RPC it handles (see ``wait_idle``). ``context``
        (the call's ``grpc.aio.ServicerContext``) tells when the RPC has ended, its answer sent:
        until then it counts as open (``alone``). A front end without such a callback (REST)
        passes none: its call counts as open until ``call_finished(close=True)``."""
        self._calls_in_flight += 1
        self.metrics.calls_in_flight.inc()
        self._idle.clear()
        self._open_rpcs += 2 if stream else 1  # a stream carries many requests: never alone
        if context is not None:
            context.add_done_callback(self._rpc_closed_stream if stream else self._rpc_closed)

    def _rpc_closed(self, _context: Any) -> None:
        self._open_rpcs -= 1

    def _rpc_closed_stream(self, _context: Any) -> None:
        self._open_rpcs -= 2

    @property
    def alone(self) -> bool:
        """Exactly one RPC is open (the caller's own, registered by ``call_started``): the
        lone-request fast path may run it (service/batching.py). A front end that does not
        register its calls never counts as alone. A heuristic for speed only: every path gives
        the same answers."""
        return self._open_rpcs == 1

    def call_finished(self, *, close: bool = False) -> None:
        """``close``: the call was registered without a context (see ``call_started``)."""
        if close:
            self._open_rpcs -= 1
        self._calls_in_flight -= 1
        self.metrics.calls_in_flight.dec()
        if self._calls_in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no RPC is being handled; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _require_ready(self) -> None:
        if not self.ready():
            state = "shutting down" if self._draining else "starting"
            raise Unavailable(f"server is {state}; retry on another replica")

    # -- models ------------------------------------------------------------------------------
    def get_model(self, name: str, version: int | None = None) -> LoadedModel:
        return self.repository.get(name, version)

    def resolve(self, request: ClassifyRequest) -> LoadedModel:
        """The version that answers ``request`` (NotFound when none is loaded)."""
        return self.repository.get(request.model, request.version)

    def list_models(self) -> list[LoadedModel]:
        return self.repository.loaded()

    def model_versions(self, name: str) -> list[int]:
        return self.repository.versions(name)

    def repository_index(self) -> list[ModelState]:
        return self.repository.index()

    def authorize_control(self, authorization: list[str]) -> None:
        """Gate for the repository-control RPCs, called by a servicer with the call's
        ``authorization`` metadata values before it looks at the request: control off ->
        Unimplemented; no/malformed bearer token -> Unauthenticated; wrong token -> PermissionDenied."""
        self._require_control_enabled()
        self._control.check(authorization)

    async def load_model(self, name: str) -> None:
        self._require_control()
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        self._require_control()
        await self.repository.unload(name)

    def _require_control_enabled(self) -> None:
        if not self.settings.repository_control:
            raise Unimplemented("repository control (load/unload) is disabled on this server "
                                "(setting repository_control)")

    def _require_control(self) -> None:
        self._require_control_enabled()
        self._require_ready()

    # -- inference ---------------------------------------------------------------------------
    def validate_texts(self, texts: Sequence[str]) -> list[str]:
        """Count first (no text is looked at when there are too many), then each text's size.
        Returns the texts as a list: a protobuf repeated string field decodes an element's UTF-8
        into a new ``str`` on every access, so the texts are decoded here once, not once per look
        (admission, tokenizer rounds) - for 64 texts of 64 KiB that was 4 MiB decoded several times
        on the event loop."""
        limit = self.settings.max_texts_per_request
        if not texts:
            raise InvalidArgument("no texts: send at least one text")
        if len(texts) > limit:
            raise InvalidArgument(f"too many texts: {len(texts)} > {limit} per request")
        texts = list(texts)
        max_bytes = self.settings.max_text_bytes
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidArgument(f"text {i} is not a string")
            if len(text) * 4 <= max_bytes:  # UTF-8 takes at most 4 bytes a character
                continue
            size = len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))
            if size > max_bytes:
                raise InvalidArgument(f"text {i} is {size} bytes; the limit is {max_bytes} bytes (UTF-8)")
        return texts

    async def classify(self, model: LoadedModel, request: ClassifyRequest) -> Classification:
        """Classify ``request.texts`` with ``model`` (from ``resolve``). If that version is retired
        before its scheduler admits the texts, the request is resolved again and submitted whole
        to the new version, which tokenizes it with its own tokenizer."""
        start = time.perf_counter()
        stages = None if self.tracer is None else StageTimes()  # TRACING HOOK
        try:
            self._require_ready()
            texts = self.validate_texts(request.texts)
            for attempt in range(3):
                try:
                    probabilities, encoded = await model.scheduler.submit(texts, request.deadline,
                                                                          self.tokenizer_pool, stages, self.alone)
                    break
                except SchedulerClosed:
                    if attempt == 2:
                        raise
                    model = self.resolve(request)
        except Exception:
            self.statistics.failure(model.name, model.version, time.perf_counter() - start)
            raise
        finally:
            if stages is not None:  # TRACING HOOK: the scheduler stages as child spans
                self.tracer.record_stages(stages)
        self.statistics.success(model.name, model.version, len(encoded), time.perf_counter() - start)
        if self.settings.log_request_texts and logger.isEnabledFor(logging.DEBUG):
            logger.debug("classified %s/%d: %r", model.name, model.version, list(request.texts))
        self._count(model, encoded)
        labels = model.labels
        predicted = [labels[i] for i in probabilities.argmax(axis=1)]
        return Classification(model_name=model.name, model_version=model.version, labels=labels,
                              probabilities=probabilities, predicted=predicted,
                              truncated=[t.truncated for t in encoded])

    def _count(self, model: LoadedModel, encoded: list[EncodedText]) -> None:
        children = self._text_metrics.get((model.name, model.version))
        if children is None:  # looked up once per version (bounded: versions that answered)
            version = str(model.version)
            children = self._text_metrics[(model.name, model.version)] = (
                self.metrics.texts.labels(model.name, version), self.metrics.tokens.labels(model.name, version),
                self.metrics.truncations.labels(model.name, version))
        texts, tokens, truncations = children
        texts.inc(len(encoded))
        tokens.inc(sum(t.length for t in encoded))
        truncated = sum(t.truncated for t in encoded)
        if truncated:
            truncations.inc(truncated)
