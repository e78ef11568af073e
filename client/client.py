"""Python client for the textclf.v1 gRPC API.

    with TextclfClient("localhost:8001") as client:
        result = client.classify(["some text"], model="news", top_k=3)
        result.predictions[0].label

Calls are retried on UNAVAILABLE (a replica restarting or draining) through gRPC's built-in
retry policy: ``retry_service_config()`` returns the service-config JSON, reusable by any gRPC
channel (e.g. ``grpc.insecure_channel(addr, options=channel_options())``). gRPC never retries a
call once the response has begun (it is "committed"), so a replica killed mid-response (behind a
proxy: RST_STREAM) would still fail the call; ``TextclfClient`` therefore also retries its unary
calls itself when ``is_transient(error)`` (``RetryPolicy``: few attempts, jittered backoff, never
past the call's deadline). Every textclf RPC is idempotent, so a repeat is safe.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

DEFAULT_RETRY_SERVICES = ("textclf.v1.TextClassifier", "inference.GRPCInferenceService")


def retry_service_config(
    services: Sequence[str] = DEFAULT_RETRY_SERVICES,
    *,
    max_attempts: int = 5,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
    backoff_multiplier: float = 2.0,
    codes: Sequence[str] = ("UNAVAILABLE", "CANCELLED"),
) -> str:
    """gRPC service config (JSON) retrying the given services' methods on ``codes``.

    Every textclf RPC is idempotent, so retrying is safe: UNAVAILABLE (connection refused, a
    server draining) and CANCELLED sent by a server or proxy as its port closes (grpc cancels
    calls it received but never dispatched; a call the client itself cancels is never retried).
    ``max_attempts`` counts the first try; gRPC caps it at 5.
    """
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": f"{initial_backoff}s",
        "maxBackoff": f"{max_backoff}s",
        "backoffMultiplier": backoff_multiplier,
        "retryableStatusCodes": list(codes),
    }
    return json.dumps({"methodConfig": [{"name": [{"service": s} for s in services], "retryPolicy": policy}]})


def channel_options(retry: bool = True, max_message_bytes: int = 16 * 1024 * 1024) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retry else 0),
    ]
    if retry:
        options.append(("grpc.service_config", retry_service_config()))
    return options


@dataclass(frozen=True)
class RetryPolicy:
    """The client's own retries of unary calls, on top of gRPC's retry policy (which stops once a
    call is committed). ``max_attempts`` counts the first try; backoff doubles from
    ``initial_backoff`` up to ``max_backoff``, each wait drawn from [50 %, 100 %] of it."""

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 1.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


_NEVER_CONNECTED = ("failed to connect to all addresses", "DNS resolution failed", "empty address list")


def is_transient(error: grpc.RpcError) -> bool:
    """Whether a failed call may succeed when repeated (on this or another replica): UNAVAILABLE
    (draining, connection lost; not "failed to connect": gRPC's policy covers that), CANCELLED that this process did not ask for (a proxy or
    server shedding or closing), and a stream reset by the transport mid-response (INTERNAL/UNKNOWN
    "RST_STREAM" / "Stream removed"). A server's own INTERNAL answer is not transient."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        # no connection at all (refused, TLS handshake, DNS): gRPC's policy and reconnect backoff
        # already retried it; repeating only delays the error the caller must see
        return not any(marker in details for marker in _NEVER_CONNECTED)
    if code == grpc.StatusCode.CANCELLED:
        return "Channel closed" not in details  # our own channel.close() is final
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and (
        "RST_STREAM" in details or "Stream removed" in details)


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]
    truncated: bool


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    predictions: list[Prediction]

    @classmethod
    def from_proto(cls, message: pb.ClassifyResponse) -> "ClassifyResult":
        predictions = [Prediction(p.label, p.probability, [(s.label, s.probability) for s in p.top], p.truncated)
                       for p in message.predictions]
        return cls(message.model, message.version, predictions)


@dataclass(frozen=True)
class StreamResult:
    """One ClassifyStream answer: ``result`` or (``code``, ``message``) when that request failed."""

    id: str
    result: ClassifyResult | None = None
    code: grpc.StatusCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    versions: list[int]
    default_version: int
    labels: list[str]
    max_len: int
    metrics: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def classify_request(texts: Sequence[str], model: str, version: int | None = None,
                     top_k: int | None = None) -> pb.ClassifyRequest:
    request = pb.ClassifyRequest(model=model, texts=list(texts))
    if version is not None:
        request.version = version
    if top_k is not None:
        request.top_k = top_k
    return request


def tls_credentials(ca: str | None = None, cert: str | None = None,
                    key: str | None = None) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files: ``ca`` verifies the server (None = the system roots);
    ``cert`` + ``key`` are this client's certificate for a server that requires mutual TLS."""
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both cert and key")

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))


class TextclfClient:
    """``credentials`` (any grpc.ChannelCredentials) or ``tls=True`` / ``tls_ca`` / ``tls_cert`` +
    ``tls_key`` (PEM paths, see ``tls_credentials``) make a TLS channel; otherwise plaintext."""

    def __init__(self, address: str, *, timeout: float | None = 10.0, retry: bool = True,
                 retry_policy: RetryPolicy = RetryPolicy(),
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: Sequence[tuple[str, str]] = (), tls: bool = False, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        if credentials is None and (tls or tls_ca or tls_cert or tls_key):
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        options = channel_options(retry)
        self.channel = (grpc.secure_channel(address, credentials, options=options) if credentials
                        else grpc.insecure_channel(address, options=options))
        self.stub = pb_grpc.TextClassifierStub(self.channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.retry_policy = retry_policy if retry else RetryPolicy(max_attempts=1)
        self.retries = 0  # calls repeated by this client's own retry (observability; approximate under threads)

    def __enter__(self) -> "TextclfClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self.metadata or None}

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        """``method(request)`` with the client's own bounded retries of transient failures; every
        attempt gets only what is left of the call's deadline."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self.metadata or None)
            except grpc.RpcError as exc:
                if attempt >= self.retry_policy.max_attempts or not is_transient(exc):
                    raise
                pause = self.retry_policy.backoff(attempt)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                attempt += 1
                self.retries += 1

    def classify(self, texts: Sequence[str], model: str, version: int | None = None, top_k: int | None = None,
                 *, timeout: float | None = None) -> ClassifyResult:
        response = self._unary(self.stub.Classify, classify_request(texts, model, version, top_k), timeout)
        return ClassifyResult.from_proto(response)

    def classify_stream(self, requests: Iterable[tuple[str, pb.ClassifyRequest]], *,
                        timeout: float | None = None) -> Iterator[StreamResult]:
        """Send ``(id, request)`` pairs over one ClassifyStream; yields answers in request order."""
        messages = (pb.ClassifyStreamRequest(id=i, request=r) for i, r in requests)
        for answer in self.stub.ClassifyStream(messages, **self._kwargs(timeout)):
            if answer.WhichOneof("result") == "response":
                yield StreamResult(answer.id, ClassifyResult.from_proto(answer.response))
            else:
                yield StreamResult(answer.id, None, _CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN),
                                   answer.error.message)

    def list_models(self, *, timeout: float | None = None) -> list[pb.ModelSummary]:
        return list(self._unary(self.stub.ListModels, pb.ListModelsRequest(), timeout).models)

    def get_model(self, name: str, version: int | None = None, *, timeout: float | None = None) -> ModelInfo:
        request = pb.GetModelRequest(name=name)
        if version is not None:
            request.version = version
        m = self._unary(self.stub.GetModel, request, timeout)
        return ModelInfo(m.name, m.version, list(m.versions), m.default_version, list(m.labels), m.max_len,
                         json_format.MessageToDict(m.metrics), json_format.MessageToDict(m.architecture),
                         json_format.MessageToDict(m.parity))
