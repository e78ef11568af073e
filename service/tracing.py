"""Opt-in OpenTelemetry tracing of requests (docs/service.md "Tracing").

Off unless ``tracing_otlp_endpoint`` is set (or ``create_app`` is handed a span exporter, as the
tests do): then ``build`` returns a ``RequestTracer`` and the hooks in the request path use it.
When off ``build`` returns None, every hook is one ``is None`` check, and nothing of
OpenTelemetry is imported (the imports below are inside ``RequestTracer``;
tests/service/test_tracing.py::test_tracing_off_imports_no_opentelemetry).

Spans:

* one per request (per message of a stream, a child of the stream's span), named by the API
  label of the request metric (``textclf.v1.Classify``, ``kserve.ModelInfer``,
  ``rest.ModelInfer``...), attributes ``textclf.api``, ``textclf.model``,
  ``textclf.model_version``, ``textclf.status`` (the gRPC status code name; REST adds
  ``http.response.status_code``), status ERROR with the client's message on failure. It continues
  a W3C ``traceparent`` (and ``tracestate``) sent in gRPC metadata or HTTP headers;
* its children, from the times the scheduler recorded for that request (``StageTimes``):
  ``tokenize``, ``queue wait`` (from the texts' admission to the queue until a batch took the
  first of them) and one ``batch run`` per onnxruntime call the request's texts were in
  (attribute ``textclf.batch_size``).

Sampling: ``ParentBased(TraceIdRatioBased(tracing_sample_ratio))`` (a sent traceparent's sampled
flag decides); export: OTLP over gRPC from a background thread (BatchSpanProcessor).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACER_NAME = "textclf.service"


@dataclass(slots=True)
class StageTimes:
    """What the scheduler records for one traced request, on the ``time.monotonic()`` clock."""

    tokenize: tuple[float, float] | None = None
    enqueued: float | None = None  # its texts entered the batch queue
    dequeued: float | None = None  # a batch took the first of them
    batches: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, texts in the batch)

    def batch(self, start: float, end: float, size: int) -> None:
        if not self.batches or self.batches[-1][0] != start:  # several of its texts in one batch: one span
            self.batches.append((start, end, size))


@dataclass(slots=True)
class RequestSpan:
    """A request's span and the context token that made it current (``RequestTracer.begin``)."""

    span: Any
    token: object


def _carrier(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        key = key.lower()
        if key in (TRACEPARENT, TRACESTATE):
            carrier[key] = value.decode("latin-1") if isinstance(value, bytes) else value
    return carrier


class RequestTracer:
    """The spans of one server process: its own TracerProvider (no global OpenTelemetry state)."""

    def __init__(self, settings: "Settings", exporter: Any = None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        from opentelemetry.trace.status import Status, StatusCode

        self._context, self._trace = context, trace
        self._status, self._error = Status, StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()
        self.provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.tracing_service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = settings.tracing_otlp_endpoint
            exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
            logger.info("tracing on: OTLP to %s, sample ratio %g", endpoint, settings.tracing_sample_ratio)
        else:  # tests and embedders: every span handed over as it ends
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer(TRACER_NAME)

    # -- request spans (the API boundaries) ----------------------------------------------
    def begin(self, api: str, metadata: Iterable[tuple[str, str | bytes]] | None = None) -> RequestSpan:
        """Start the span of a request named ``api`` and make it current. ``metadata`` (gRPC
        invocation metadata or HTTP headers): a ``traceparent`` there is its parent; without one
        the current span (a stream's) is."""
        carrier = _carrier(metadata)
        parent = self._propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(api, context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes={"textclf.api": api})
        return RequestSpan(span, self._context.attach(self._trace.set_span_in_context(span)))

    def end(self, request: RequestSpan, model: str, version: str, code: str, message: str = "",
            http_status: int | None = None) -> None:
        """Label the request span with what the request resolved and how it ended, then end it."""
        span = request.span
        try:
            self._context.detach(request.token)
        except ValueError:  # ended from another context (a stream closed elsewhere): nothing to restore
            pass
        if span.is_recording():
            span.set_attribute("textclf.model", model)
            span.set_attribute("textclf.model_version", version)
            span.set_attribute("textclf.status", code)
            if http_status is not None:
                span.set_attribute("http.response.status_code", http_status)
            if code != "OK":
                span.set_status(self._status(self._error, message or code))
        span.end()

    # -- children (the core) -------------------------------------------------------------
    def record_stages(self, stages: StageTimes) -> None:
        """The scheduler stages of the current request, as children of its span."""
        parent = self._trace.get_current_span()
        if not parent.is_recording():
            return
        context = self._trace.set_span_in_context(parent)
        offset = time.time_ns() - time.monotonic_ns()

        def child(name: str, start: float, end: float, **attributes: Any) -> None:
            span = self.tracer.start_span(name, context=context, start_time=int(start * 1e9) + offset,
                                          attributes=attributes or None)
            span.end(end_time=int(end * 1e9) + offset)

        if stages.tokenize is not None:
            child("tokenize", *stages.tokenize)
        if stages.enqueued is not None and stages.dequeued is not None:
            child("queue wait", stages.enqueued, stages.dequeued)
        for start, end, size in stages.batches:
            child("batch run", start, end, **{"textclf.batch_size": size})

    def shutdown(self) -> None:
        """Export what is buffered, stop the exporter thread."""
        self.provider.shutdown()


def build(settings: "Settings", exporter: Any = None) -> RequestTracer | None:
    """The process's tracer, or None when tracing is off (no endpoint and no exporter)."""
    if exporter is None and not settings.tracing_otlp_endpoint:
        return None
    try:
        return RequestTracer(settings, exporter)
    except ImportError as exc:
        from service.settings import SettingsError

        raise SettingsError(f"tracing_otlp_endpoint is set but OpenTelemetry is not installed ({exc}): "
                            "pip install 'textclf[tracing]'") from None
