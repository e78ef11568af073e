"""Building the gRPC server: core, servicers, health, reflection, metrics endpoint.

``create_app(settings)`` returns an ``App`` (everything built, models loaded, port bound, not
started).

Servicers are added by registrars ``(server, core) -> full service name`` (``REGISTRARS``: the
textclf.v1 and KServe v2 APIs). Every registered name is listed by reflection.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api import kserve, textclf_v1
from service.api.descriptors import reflection_pool
from service.call_limit import ConcurrentCallLimit
from service.core import InferenceCore
from service.inference_pool import InferencePool
from service.intake import CallIntake
from service.memory import MemoryTrimmer
from service.metrics import ServiceMetrics
from service.repository import ModelRepository, RepositoryEvent
from service.runtime import RuntimeConfigError, resolve_providers
from service.settings import Settings
from service.tracing import build as build_tracer

logger = logging.getLogger(__name__)

Registrar = Callable[[grpc.aio.Server, InferenceCore], str]
REGISTRARS: tuple[Registrar, ...] = (textclf_v1.register, kserve.register)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# After a drain, how long gRPC gets to send the answers already handed to it before the calls still
# open (streams ended by the server whose clients have not closed their side) are cut
FLUSH_AFTER_DRAIN_S = 1.0


def register_servicers(server: grpc.aio.Server, core: InferenceCore) -> list[str]:
    """Add every API servicer to ``server``; returns their full service names."""
    return [register(server, core) for register in REGISTRARS]


def _read_tls_file(name: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RuntimeConfigError(f"{name}={path!r}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise RuntimeConfigError(f"{name}={path!r}: not a PEM file")
    return data


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and with ``tls_client_ca`` mutual TLS) credentials, or None for plaintext. The files are
    checked here with the ``ssl`` module, so a bad or mismatched file is a clear start-up error
    (RuntimeConfigError, exit 2) instead of failed handshakes later."""
    if not settings.tls_enabled:
        return None
    key = _read_tls_file("tls_key", settings.tls_key)
    cert = _read_tls_file("tls_cert", settings.tls_cert)
    client_ca = _read_tls_file("tls_client_ca", settings.tls_client_ca) if settings.tls_client_ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise RuntimeConfigError(f"tls_cert={settings.tls_cert!r} / tls_key={settings.tls_key!r}: not a usable "
                                 f"certificate and matching unencrypted private key ({exc})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise RuntimeConfigError(f"tls_client_ca={settings.tls_client_ca!r}: not a usable CA bundle ({exc})") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class App:
    """The running service: settings, metrics, repository, core, health and the gRPC server."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, inference: InferencePool,
                 repository: ModelRepository, core: InferenceCore, health_servicer: health.aio.HealthServicer,
                 server: grpc.aio.Server, port: int, service_names: list[str], intake: CallIntake,
                 call_limit: ConcurrentCallLimit | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.inference = inference
        self.repository = repository
        self.core = core
        self.health = health_servicer
        self.server = server
        self.port = port
        self.service_names = service_names
        self.intake = intake
        self.call_limit = call_limit  # max_concurrent_rpcs, when set
        self.metrics_port: int | None = None
        self.rest = None  # service.api.http11.HTTPServer when rest_port >= 0
        self.rest_port: int | None = None
        self._health_tasks: set[asyncio.Task] = set()
        self.memory_trimmer = MemoryTrimmer(settings.memory_trim_mb, on_trim=metrics.memory_trimmed.inc)
        repository.listeners.append(self._on_repository_event)

    async def start(self) -> None:
        await self.server.start()
        self.intake.start()
        if self.rest is not None:
            await self.rest.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        for name in self.repository.model_names():
            await self.health.set(name, SERVING)
        self.core.mark_started()
        await self.health.set("", SERVING)
        for service_name in self.service_names:
            await self.health.set(service_name, SERVING)
        self.memory_trimmer.start()  # its baseline: the RSS with every model loaded and warmed up

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, let admitted calls finish within ``grace``."""
        grace = self.settings.grace_period if grace is None else grace
        deadline = time.monotonic() + grace
        self.core.start_draining()
        await self.health.enter_graceful_shutdown()
        # The gRPC server keeps accepting while admitted calls finish: a call arriving now is
        # answered UNAVAILABLE by the core (retryable on another replica). Stopping the server
        # first would make grpc cancel calls it had received but not yet dispatched (CANCELLED).
        drained = await self.core.wait_idle(grace)
        if drained and self.settings.drain_delay > 0:
            await asyncio.sleep(min(self.settings.drain_delay, max(0.0, deadline - time.monotonic())))
        # Close the port at an instant when no handler runs: grpc cancels running handlers on
        # stop. Handlers run on this event loop, so nothing starts between the check and stop().
        while drained and self.core.calls_in_flight:
            drained = await self.core.wait_idle(max(0.0, deadline - time.monotonic()))
        remaining = max(0.0, deadline - time.monotonic())
        if not drained:
            logger.warning("grace period of %.1f s over with %d call(s) still running", grace,
                           self.core.calls_in_flight)
        else:
            # Every handler has returned, so every answer is with gRPC; beyond flushing them it would
            # only wait for clients to close streams the server has already ended, and an idle
            # client that never does would hold the exit for the whole grace period.
            remaining = min(remaining, FLUSH_AFTER_DRAIN_S)
        await self.server.stop(remaining)
        self.intake.close()
        if self.rest is not None:
            await self.rest.close()
        await self.repository.close()
        self.core.close()
        self.inference.shutdown()
        self.memory_trimmer.stop()
        self.metrics.stop()
        if self.core.tracer is not None:
            self.core.tracer.shutdown()

    def _on_repository_event(self, event: RepositoryEvent) -> None:
        status = SERVING if self.repository.versions(event.name) else NOT_SERVING
        if event.kind == "refused" and not self.repository.versions(event.name):
            return  # a never-loaded model stays unknown to health
        task = asyncio.get_running_loop().create_task(self.health.set(event.name, status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)


def grpc_server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel args of the gRPC server. ``reuse_port`` (SO_REUSEPORT) only for the workers of a
    multi-worker supervisor: a single server must fail to bind a port that is taken. The pending-call
    limits bound the backlog gRPC core keeps before the event loop takes a call (docs/reliability.md):
    calls beyond them are shed by gRPC core and never reach a servicer (clients see CANCELLED). The
    connection age and idle limits send GOAWAY so clients reconnect (and a balancer can rebalance)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if settings.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", settings.max_concurrent_streams))
        # gRPC core refuses a new stream (RST_STREAM REFUSED_STREAM: clients see UNAVAILABLE) while
        # more streams than the limit are still allocated, and that counts calls whose answer the
        # client already has but the server has not released yet; with grpcio 1.85's default of no
        # headroom for those, a client that opens its next call as soon as one ends got refused at
        # the limit (18 % of 4,000 calls, 400 at a time on one connection, limit 128). As many again
        # as headroom: the client still never has more than the limit open at once.
        options.append(("grpc.http2.max_deallocating_streams", settings.max_concurrent_streams))
    for arg, seconds in (("grpc.max_connection_age_ms", settings.max_connection_age_seconds),
                         ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_seconds),
                         ("grpc.max_connection_idle_ms", settings.max_connection_idle_seconds)):
        if seconds > 0:  # 0 = gRPC's default: never
            options.append((arg, max(1, round(seconds * 1000))))
    for arg, value in (("grpc.server.max_pending_requests", settings.grpc_max_pending_requests),
                       ("grpc.server.max_pending_requests_hard_limit", settings.grpc_max_pending_requests_hard_limit),
                       ("grpc.server_max_unrequested_time_in_server", settings.grpc_max_unrequested_seconds)):
        if value > 0:
            options.append((arg, value))
    return options


async def create_app(settings: Settings, *, reuse_port: bool = False, span_exporter: object = None) -> App:
    """``reuse_port``: a worker of the multi-worker supervisor (gRPC and REST ports shared).
    ``span_exporter`` (an OpenTelemetry SpanExporter, e.g. the SDK's InMemorySpanExporter):
    tracing on with spans handed there instead of OTLP (tests, embedders)."""
    credentials = _server_credentials(settings)  # before loading models: bad TLS files fail fast
    if settings.repository_control and credentials is None:
        logger.warning("repository_control is on without TLS: the control token crosses the network in cleartext; "
                       "set tls_cert/tls_key or bind host to a loopback/private address")
    providers = resolve_providers(settings.providers)
    metrics = ServiceMetrics()
    inference = InferencePool(settings.inference_workers)
    repository = ModelRepository(settings, metrics, inference, providers)
    await repository.load_all()
    core = InferenceCore(settings, repository, metrics)
    core.tracer = build_tracer(settings, span_exporter)  # None when tracing is off
    call_limit = None  # not grpcio's own maximum_concurrent_rpcs: it would not count the deeper intake's calls
    if settings.max_concurrent_rpcs > 0:
        call_limit = ConcurrentCallLimit(settings.max_concurrent_rpcs,
                                         on_refused=metrics.calls_refused.labels("max_concurrent_rpcs").inc)
    interceptors = () if call_limit is None else (call_limit,)
    server = grpc.aio.server(options=grpc_server_options(settings, reuse_port=reuse_port), interceptors=interceptors)
    # before any servicer is added; the extra intake pauses while large requests are in flight
    intake = CallIntake(server, settings.grpc_intake_depth, interceptors, gate=core.request_bytes.wait_none_in_flight)
    service_names = register_servicers(server, core)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", NOT_SERVING)  # SERVING once started
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflected = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(reflected, server, pool=reflection_pool(reflected))
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    logger.info("models loaded: %s", ", ".join(f"{m.name}/{m.version}" for m in repository.loaded()) or "none")
    app = App(settings, metrics, inference, repository, core, health_servicer, server, port, service_names, intake,
              call_limit)
    if settings.rest_port >= 0:  # KServe v2 over HTTP/REST (docs/rest.md); imported only when on
        from service.api.rest import build_server

        if credentials is not None:
            logger.warning("the REST port serves plaintext HTTP while the gRPC port uses TLS: bind rest_host to a "
                           "loopback/private address or put a TLS-terminating proxy in front (docs/rest.md)")

        app.rest = build_server(core)
        try:
            app.rest_port = await app.rest.bind(settings.rest_host, settings.rest_port, reuse_port=reuse_port)
        except OSError as exc:
            raise OSError(f"cannot bind REST port {settings.rest_host}:{settings.rest_port} ({exc.strerror})") from None
    return app

