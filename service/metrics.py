"""Every Prometheus metric of the service, in its own registry, served on its own HTTP port.

Multi-worker mode (``workers > 1``, service/supervisor.py): every worker process runs with
``PROMETHEUS_MULTIPROC_DIR`` set, so prometheus_client keeps the values in per-process files; the
supervisor serves their aggregate (``MultiProcessCollector``) on the one metrics port. Counters and
histograms are summed over every worker that ever ran; gauges say how they combine
(``multiprocess_mode``). ``textclf_worker_requests_total{worker}`` exists only in that mode.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _HTTPServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
        pass


WORKER_INDEX_ENV = "TEXTCLF_WORKER_INDEX"  # set by the supervisor for its workers (not a setting)


def request_counts(families: Iterable[Metric]) -> dict[str, dict[str, int]]:
    """``textclf_requests_total`` samples summed over model and version: {api: {code: count}}."""
    counts: dict[str, dict[str, int]] = {}
    for family in families:
        if family.name != "textclf_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                by_code = counts.setdefault(sample.labels["api"], {})
                by_code[sample.labels["code"]] = by_code.get(sample.labels["code"], 0) + int(sample.value)
    return counts


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread."""
    server_class = _HTTPServer6 if ":" in host else _HTTPServer
    http = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics-http",
                              daemon=True)
    thread.start()
    logger.info("metrics on http://%s:%d/metrics", host, int(http.server_port))
    return http, thread


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("textclf_requests", "gRPC requests by API, model, version and status code",
                                ["api", "model", "version", "code"], registry=r)
        self.request_seconds = Histogram("textclf_request_duration_seconds", "Time to answer a request",
                                         ["api", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("textclf_queue_duration_seconds", "Time a text waited for its batch",
                                       ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("textclf_inference_duration_seconds",
                                           "onnxruntime time per batch (padding, run, softmax)",
                                           ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("textclf_batch_size", "Texts per onnxruntime call", ["model", "version"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("textclf_queue_depth", "Texts waiting to be batched", ["model", "version"],
                                 registry=r, multiprocess_mode="livesum")
        self.calls_in_flight = Gauge("textclf_calls_in_flight",
                                     "RPCs a servicer is handling now (calls gRPC core still queues are not counted)",
                                     registry=r, multiprocess_mode="livesum")
        self.texts = Counter("textclf_texts", "Texts classified", ["model", "version"], registry=r)
        self.tokens = Counter("textclf_tokens", "Tokens fed to the model (after truncation)",
                              ["model", "version"], registry=r)
        self.truncations = Counter("textclf_truncated_texts", "Texts longer than max_len, cut",
                                   ["model", "version"], registry=r)
        self.dropped = Counter("textclf_dropped_texts",
                               "Texts dropped before compute (reason: deadline | cancelled)",
                               ["model", "version", "reason"], registry=r)
        self.rejected = Counter("textclf_rejected_texts", "Texts refused because the queue was full",
                                ["model", "version"], registry=r)
        self.model_loaded = Gauge("textclf_model_loaded", "1 for every loaded model version",
                                  ["model", "version"], registry=r, multiprocess_mode="livemax")
        self.model_default_version = Gauge("textclf_model_default_version", "Version answering by default",
                                           ["model"], registry=r, multiprocess_mode="livemax")
        self.bundle_refusals = Counter("textclf_bundle_refusals",
                                       "Bundles refused (reason: verification | load | warmup)",
                                       ["model", "version", "reason"], registry=r)
        self.model_loads = Counter("textclf_model_loads", "Model versions loaded and warmed up",
                                   ["model", "version"], registry=r)
        self.worker_index = os.environ.get(WORKER_INDEX_ENV)
        self.worker_requests: Counter | None = None
        if self.worker_index is not None:  # a worker of the multi-worker supervisor
            self.worker_requests = Counter("textclf_worker_requests", "gRPC requests answered by each worker process",
                                           ["worker"], registry=r)
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- request metric (recorded at the API boundary) --------------------------------------
    def observe_request(self, api: str, model: str, version: str, code: str, seconds: float) -> None:
        self.requests.labels(api, model or "", version or "", code).inc()
        self.request_seconds.labels(api, model or "").observe(seconds)
        if self.worker_requests is not None:
            self.worker_requests.labels(self.worker_index).inc()

    def request_counts(self) -> dict[str, dict[str, int]]:
        """``textclf_requests_total`` summed over model and version: {api: {code: count}} (this process)."""
        return request_counts(self.requests.collect())

    # -- model lifecycle --------------------------------------------------------------------
    def set_loaded(self, model: str, versions: list[int], default_version: int | None) -> None:
        for labels in list(self._loaded_label_sets(model)):
            if int(labels[1]) not in versions:
                self.model_loaded.labels(*labels).set(0)  # multi-worker mode: remove() leaves the file's value
                self.model_loaded.remove(*labels)
        for version in versions:
            self.model_loaded.labels(model, str(version)).set(1)
        if default_version is None:
            try:
                self.model_default_version.remove(model)
            except KeyError:
                pass
        else:
            self.model_default_version.labels(model).set(default_version)

    def _loaded_label_sets(self, model: str) -> list[tuple[str, str]]:
        return [key for key in self.model_loaded._metrics if key[0] == model]  # noqa: SLF001

    # -- HTTP endpoint ----------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Start /metrics on its own port; returns the bound port (useful with port 0)."""
        self._http, self._http_thread = serve_registry(self.registry, host, port)
        return int(self._http.server_port)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
