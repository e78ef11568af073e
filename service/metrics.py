"""Every Prometheus metric of the service, in its own registry, served on its own HTTP port.

Multi-worker mode (``workers > 1``, service/supervisor.py): every worker process runs with
``PROMETHEUS_MULTIPROC_DIR`` set, so prometheus_client keeps the values in per-process files; the
supervisor serves their aggregate (``MultiProcessCollector``) on the one metrics port. Counters and
histograms are summed over every worker that ever ran; gauges say how they combine
(``multiprocess_mode``). ``textclf_worker_requests_total{worker}`` exists only in that mode.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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


class MetricsHTTPServer:
    """``/metrics`` over HTTP/1.x from one thread running an asyncio loop, whatever the clients do.

    prometheus_client's own server starts a thread per connection and waits forever for request
    headers, so idle or slow connections pile up threads. Here every connection is a coroutine on
    the one thread; a request must arrive whole within ``header_timeout`` seconds (at most
    ``HEADER_LIMIT`` bytes of head); at most ``max_connections`` are open, and a new one evicts the
    connection that has waited longest for its headers, so a scrape always gets through
    (tests/service/test_metrics.py::test_idle_connections_cannot_exhaust_the_metrics_endpoint)."""

    HEADER_LIMIT = 16 * 1024

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, header_timeout: float = 5.0,
                 max_connections: int = 64) -> None:
        self.registry = registry
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._waiting: dict[asyncio.Task, None] = {}  # connections still reading headers, oldest first
        self._open = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="metrics-http", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _run(self, host: str, port: int) -> None:
        """The thread: bind (errors go back to the constructor), then serve until ``shutdown``."""
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, host, port, limit=self.HEADER_LIMIT, backlog=128))
            self.server_port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the constructor's thread
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._open += 1
        if self._open > self.max_connections and self._waiting:
            next(iter(self._waiting)).cancel()  # the connection that has waited longest for headers
        self._waiting[task] = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
            del self._waiting[task]
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), self.header_timeout)
        except (asyncio.CancelledError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            self._waiting.pop(task, None)
            self._open -= 1
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _http_response(b"400 Bad Request", b"text/plain", b"bad request\n")
        if parts[0] not in (b"GET", b"HEAD"):
            return _http_response(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
        body = generate_latest(self.registry)
        return _http_response(b"200 OK", CONTENT_TYPE_LATEST.encode(), body, head_only=parts[0] == b"HEAD")

    def shutdown(self) -> None:
        """Close the port and every connection, end the thread."""
        async def close() -> None:
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def server_close(self) -> None:
        """Kept for callers written against ``socketserver``: ``shutdown`` already closed everything."""


def _http_response(status: bytes, content_type: bytes, body: bytes, *, head_only: bool = False) -> bytes:
    head = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
    return head if head_only else head + body


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> tuple[MetricsHTTPServer, threading.Thread]:
    """Serve ``registry`` at http://host:port/metrics from its own thread (``MetricsHTTPServer``)."""
    http = MetricsHTTPServer(registry, host, port)
    logger.info("metrics on http://%s:%d/metrics", host, http.server_port)
    return http, http._thread  # noqa: SLF001


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
        self.calls_refused = Counter("textclf_calls_refused",
                                     "Calls refused before their request was read (reason: max_concurrent_rpcs)",
                                     ["reason"], registry=r)
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
        self.memory_trimmed = Counter("textclf_memory_trimmed_bytes",
                                      "Freed memory returned to the OS by malloc_trim after bursts (service/memory.py)",
                                      registry=r)
        self.event_loop_spin = Counter("textclf_event_loop_spin_seconds",
                                       "Seconds the event loop polled instead of sleeping while no call was being handled "
                                       "(idle_spin_us, service/event_loop.py): CPU spent for lone callers' latency",
                                       registry=r)
        self.worker_index = os.environ.get(WORKER_INDEX_ENV)
        self.worker_requests: Counter | None = None
        if self.worker_index is not None:  # a worker of the multi-worker supervisor
            self.worker_requests = Counter("textclf_worker_requests", "gRPC requests answered by each worker process",
                                           ["worker"], registry=r)
        self._request_children: dict[tuple[str, str, str, str], tuple] = {}
        self._http: MetricsHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- request metric (recorded at the API boundary) --------------------------------------
    def observe_request(self, api: str, model: str, version: str, code: str, seconds: float) -> None:
        key = (api, model or "", version or "", code)
        children = self._request_children.get(key)
        if children is None:  # one labels() look-up per label set, not per call (bounded like the series)
            children = self._request_children[key] = (
                self.requests.labels(*key), self.request_seconds.labels(api, key[1]),
                None if self.worker_requests is None else self.worker_requests.labels(self.worker_index))
        requests, request_seconds, worker_requests = children
        requests.inc()
        request_seconds.observe(seconds)
        if worker_requests is not None:
            worker_requests.inc()

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
