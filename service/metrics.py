"""Every Prometheus metric of the service, in its own registry, served on its own HTTP port."""
from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

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
                                 registry=r)
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
                                  ["model", "version"], registry=r)
        self.model_default_version = Gauge("textclf_model_default_version", "Version answering by default",
                                           ["model"], registry=r)
        self.bundle_refusals = Counter("textclf_bundle_refusals",
                                       "Bundles refused (reason: verification | load | warmup)",
                                       ["model", "version", "reason"], registry=r)
        self.model_loads = Counter("textclf_model_loads", "Model versions loaded and warmed up",
                                   ["model", "version"], registry=r)
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- request metric (recorded at the API boundary) --------------------------------------
    def observe_request(self, api: str, model: str, version: str, code: str, seconds: float) -> None:
        self.requests.labels(api, model or "", version or "", code).inc()
        self.request_seconds.labels(api, model or "").observe(seconds)

    def request_counts(self) -> dict[str, dict[str, int]]:
        """``textclf_requests_total`` summed over model and version: {api: {code: count}}."""
        counts: dict[str, dict[str, int]] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    by_code = counts.setdefault(sample.labels["api"], {})
                    by_code[sample.labels["code"]] = by_code.get(sample.labels["code"], 0) + int(sample.value)
        return counts

    # -- model lifecycle --------------------------------------------------------------------
    def set_loaded(self, model: str, versions: list[int], default_version: int | None) -> None:
        for labels in list(self._loaded_label_sets(model)):
            if int(labels[1]) not in versions:
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
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self._http = make_server(host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler)
        self._http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                             name="metrics-http", daemon=True)
        self._http_thread.start()
        bound = int(self._http.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
