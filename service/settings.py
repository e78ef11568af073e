"""Service settings: one dataclass, built once in ``main()`` and passed down.

Sources, lowest precedence first: defaults < YAML file (``--config`` / ``TEXTCLF_CONFIG``) <
environment (``TEXTCLF_<NAME>``) < command-line flags (``--<name-with-dashes>``). Every field is
validated in ``Settings.validate`` with a message naming the setting and where it came from.
Nothing is parsed at import time.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "TEXTCLF_"
PROVIDERS = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_CONTROL_TOKEN_CHARS = 16


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message says which and why."""


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = _opt("0.0.0.0", "gRPC listen host")
    port: int = _opt(8001, "gRPC listen port (0 = any free port)")
    metrics_host: str = _opt("0.0.0.0", "Prometheus /metrics HTTP host")
    metrics_port: int = _opt(8002, "Prometheus /metrics HTTP port (0 = any free port, -1 = disabled)")
    max_receive_message_bytes: int = _opt(4 * 1024 * 1024, "largest gRPC request message accepted")
    max_send_message_bytes: int = _opt(16 * 1024 * 1024, "largest gRPC response message sent")
    # 256/512: a 10-minute soak at 80 % load with 64/128 shed ~0.1 % of calls during event-loop
    # hiccups; 256/512 still bounds admitted p99 at 2x load to under a second (docs/reliability.md)
    grpc_max_pending_requests: int = _opt(
        256, "calls gRPC core queues before the event loop takes them, per process; beyond it gRPC sheds new calls "
            "at random (clients see CANCELLED; 0 = gRPC default 1000)")
    grpc_max_pending_requests_hard_limit: int = _opt(
        512, "calls gRPC core queues at most, per process; beyond it every new call is shed (0 = gRPC default 3000)")
    # 1 s (was 5): a call waiting longer in gRPC core's backlog is shed (CANCELLED, retryable) instead of
    # being answered seconds late; the smallest non-zero value gRPC takes (whole seconds)
    grpc_max_unrequested_seconds: int = _opt(
        1, "a call gRPC core queued this long without the event loop taking it is shed (0 = gRPC default 30)")
    # Connection lifetime (issue 9): balancers can only rebalance connections that end
    max_connection_age_seconds: float = _opt(
        0.0, "a client connection older than this gets GOAWAY and reconnects (new calls then go where the balancer "
             "sends them); 0 = never (deployments set it: docker-compose.yml, deploy/k8s)")
    max_connection_age_grace_seconds: float = _opt(
        30.0, "after that GOAWAY, calls and streams still open get this long before the connection is closed")
    max_connection_idle_seconds: float = _opt(
        300.0, "a connection with no call for this long gets GOAWAY (the client reconnects when it next calls); 0 = never")
    tls_cert: str = _opt("", "PEM server certificate; with tls_key enables TLS on the gRPC port")
    tls_key: str = _opt("", "PEM private key for tls_cert")
    tls_client_ca: str = _opt("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
    workers: int = _opt(1, "server processes sharing the gRPC port (SO_REUSEPORT) under one supervisor; "
                           "1 = a single process (recommended with intra_op_threads=1 and workers = cores)")
    # Models
    model_repository: str = _opt("./models", "model repository directory (<repo>/<name>/<version>/)")
    max_versions: int = _opt(0, "load the latest N valid versions of each model (0 = all)")
    poll_interval: float = _opt(0.0, "seconds between repository scans for new/removed versions (0 = off)")
    repository_control: bool = _opt(False, "allow the load/unload repository RPCs (needs control_token or control_token_file)")
    control_token: str = field(default="", repr=False, metadata={
        "help": "bearer token for the repository RPCs (at least 16 characters; prefer the env or a file to a flag)"})
    control_token_file: str = _opt("", "file holding the repository-control bearer token (surrounding whitespace ignored)")
    warmup: bool = _opt(True, "run warm-up inferences before a model version receives traffic")
    # Runtime
    providers: str = _opt("auto", "onnxruntime execution provider: auto, cpu or cuda")
    intra_op_threads: int = _opt(1, "onnxruntime intra-op threads per session (0 = onnxruntime default: one per core); "
                                    "1 serves best beside the event loop on CPU (docs/benchmarks.md)")
    inter_op_threads: int = _opt(0, "onnxruntime inter-op threads per session (0 = onnxruntime default)")
    intra_op_spinning: bool = _opt(False, "let idle onnxruntime intra-op threads spin-wait for work (burns CPU the "
                                          "gRPC event loop needs; on only for dedicated inference cores)")
    inference_workers: int = _opt(1, "worker threads running onnxruntime (shared by all models)")
    # Batching
    batching: bool = _opt(True, "dynamic batching across concurrent requests (off = each request runs alone)")
    max_batch_size: int = _opt(64, "most texts in one onnxruntime call")
    max_queue_delay_ms: float = _opt(0.0, "longest a text waits for batch-mates once the worker is free (0 = greedy)")
    max_queue_size: int = _opt(1024, "most texts waiting per model version; beyond it RESOURCE_EXHAUSTED")
    # ~0.5 s of work for the BBC GRU (max_len 384) on one 2-core machine's inference thread, which
    # computes ~93k tokens/s in batches of 64 x 384; size it as seconds x tokens/s (docs/service.md)
    max_queue_tokens: int = _opt(
        49_152, "most tokens waiting per model version (admitted, not yet computed; a text counts its tokens, at least "
                "8, or max_len while it is tokenized); beyond it RESOURCE_EXHAUSTED; a larger request runs only alone")
    length_bucket_ratio: float = _opt(2.0, "a batch's longest text is at most this times its shortest (>= 1)")
    # Request limits
    max_texts_per_request: int = _opt(256, "most texts in one request")
    max_text_bytes: int = _opt(64 * 1024, "largest text (UTF-8 bytes)")
    stream_max_in_flight: int = _opt(64, "requests of one ClassifyStream processed concurrently")
    # Work before admission (docs/reliability.md "Bounded work before admission")
    max_concurrent_rpcs: int = _opt(
        1024, "RPCs handled at once per process (a stream counts as one); beyond it new calls get RESOURCE_EXHAUSTED "
              "(0 = unlimited)")
    max_concurrent_streams: int = _opt(
        128, "concurrent calls (HTTP/2 streams) one client connection may open; more wait in the client "
             "(0 = gRPC default, unlimited)")
    tokenize_workers: int = _opt(1, "threads tokenizing requests too large to tokenize on the event loop (all models)")
    tokenize_max_backlog_texts: int = _opt(
        256, "texts queued for or in the tokenizer threads; beyond it such requests get RESOURCE_EXHAUSTED "
             "(a request arriving when they are idle is always taken)")
    # Lifecycle and logging
    grace_period: float = _opt(10.0, "seconds admitted calls get to finish on SIGTERM/SIGINT")
    drain_delay: float = _opt(0.5, "seconds a drained server keeps answering UNAVAILABLE before it closes its port")
    log_level: str = _opt("INFO", "logging level: DEBUG, INFO, WARNING or ERROR")
    log_request_texts: bool = _opt(False, "log request texts at DEBUG level (never on by default)")
    # REST and tracing (issue 12; docs/rest.md, docs/service.md "Tracing")
    rest_host: str = _opt("0.0.0.0", "KServe v2 HTTP/REST listen host")
    rest_port: int = _opt(-1, "KServe v2 HTTP/REST port (0 = any free port, -1 = off)")
    rest_max_connections: int = _opt(256, "open HTTP/REST connections per process; beyond it the longest-idle "
                                          "connection is closed")
    rest_idle_timeout: float = _opt(30.0, "seconds an HTTP/REST connection may wait for (the whole head of) its "
                                          "next request before it is closed")
    tracing_otlp_endpoint: str = _opt("", "OpenTelemetry OTLP/gRPC collector endpoint, e.g. http://127.0.0.1:4317; "
                                          "set = tracing on ('' = off: nothing of OpenTelemetry is imported)")
    tracing_sample_ratio: float = _opt(1.0, "share of new traces recorded (0..1); a sent traceparent's sampled flag wins")
    tracing_service_name: str = _opt("textclf", "service.name of the spans")

    def validate(self) -> "Settings":
        errors: list[str] = []

        def check(ok: bool, name: str, requirement: str) -> None:
            if not ok:
                errors.append(f"{name}={getattr(self, name)!r}: {requirement}")

        for name in ("port", "metrics_port", "rest_port"):
            low = -1 if name in ("metrics_port", "rest_port") else 0
            check(low <= getattr(self, name) <= 65535, name, f"must be in [{low}, 65535]")
        for name in ("max_receive_message_bytes", "max_send_message_bytes", "max_batch_size", "max_queue_size",
                     "max_texts_per_request", "max_text_bytes", "stream_max_in_flight", "inference_workers",
                     "max_queue_tokens", "workers", "tokenize_workers", "tokenize_max_backlog_texts",
                     "rest_max_connections"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("max_versions", "intra_op_threads", "inter_op_threads", "grpc_max_pending_requests",
                     "grpc_max_pending_requests_hard_limit", "grpc_max_unrequested_seconds", "max_concurrent_rpcs",
                     "max_concurrent_streams"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("poll_interval", "max_queue_delay_ms", "grace_period", "drain_delay", "max_connection_age_seconds",
                     "max_connection_age_grace_seconds", "max_connection_idle_seconds"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.rest_idle_timeout > 0, "rest_idle_timeout", "must be > 0")
        check(0.0 <= self.tracing_sample_ratio <= 1.0, "tracing_sample_ratio", "must be in [0, 1]")
        check(not self.tracing_otlp_endpoint or "://" in self.tracing_otlp_endpoint, "tracing_otlp_endpoint",
              "must be a URL such as http://127.0.0.1:4317")
        check(not (self.grpc_max_pending_requests and self.grpc_max_pending_requests_hard_limit)
              or self.grpc_max_pending_requests <= self.grpc_max_pending_requests_hard_limit,
              "grpc_max_pending_requests", "must be <= grpc_max_pending_requests_hard_limit")
        check(self.max_texts_per_request <= self.max_queue_size, "max_texts_per_request",
              f"must be <= max_queue_size={self.max_queue_size}: a request of max_texts_per_request texts "
              "could never be admitted, even on an idle server")
        check(self.length_bucket_ratio >= 1.0, "length_bucket_ratio", "must be >= 1")
        check(not (self.repository_control and self.workers > 1), "repository_control",
              "cannot be on with workers > 1: a load/unload RPC would reach one worker process only; "
              "change models with poll_interval (every worker polls the repository)")
        check(self.providers in PROVIDERS, "providers", f"must be one of {', '.join(PROVIDERS)}")
        check(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        check(bool(self.tls_cert) == bool(self.tls_key), "tls_cert", "tls_cert and tls_key must be set together")
        check(not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca", "needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "control_token_file"):
            value = getattr(self, name)
            check(not value or Path(value).is_file(), name, "file does not exist")
        # the token's value never appears in a message
        if self.control_token and self.control_token_file:
            errors.append("control_token and control_token_file: set one, not both")
        if self.control_token and len(self.control_token.strip()) < MIN_CONTROL_TOKEN_CHARS:
            errors.append(f"control_token: must be at least {MIN_CONTROL_TOKEN_CHARS} characters")
        if self.repository_control and not (self.control_token or self.control_token_file):
            errors.append(f"repository_control=True: needs a bearer token: set control_token ({env_name('control_token')}) "
                          f"or control_token_file ({env_name('control_token_file')})")
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
        return self

    @property
    def max_queue_delay(self) -> float:
        return self.max_queue_delay_ms / 1000.0

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def read_control_token(self) -> str:
        """The repository-control bearer token ('' when control is off); SettingsError if the file
        cannot be read or holds too short a token. Never logged."""
        if not self.repository_control:
            return ""
        if not self.control_token_file:
            return self.control_token.strip()
        try:
            token = Path(self.control_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"control_token_file={self.control_token_file!r}: cannot read it ({exc})") from None
        if len(token) < MIN_CONTROL_TOKEN_CHARS:
            raise SettingsError(f"control_token_file={self.control_token_file!r}: the token must be at least "
                                f"{MIN_CONTROL_TOKEN_CHARS} characters")
        return token

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes).validate()


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, kind: type, raw: Any, source: str) -> Any:
    """Convert a raw value (str from env/CLI, any from YAML) to the field's type."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true/false")
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected an integer")
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if raw is None:
            raise ValueError("expected a string")
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} from {source}: cannot read {raw!r} ({exc})") from None


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _field_types() -> dict[str, type]:
    return {f.name: _TYPES[f.type] if isinstance(f.type, str) else f.type for f in fields(Settings)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textclf serve", description="Serve a model repository over gRPC.")
    parser.add_argument("--config", help=f"YAML settings file (also {ENV_PREFIX}CONFIG)")
    for f in fields(Settings):
        kind = _field_types()[f.name]
        default_text = f"default {f.default!r}; env {env_name(f.name)}"
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{f.metadata['help']} ({default_text})")
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                                help=f"{f.metadata['help']} ({default_text})")
    return parser


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from defaults, a YAML file, the environment and ``argv``."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv or []))
    types = _field_types()
    values: dict[str, Any] = {}
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for key, raw in _read_yaml(config_path).items():
            if key not in types:
                raise SettingsError(f"config file {config_path}: unknown setting {key!r}")
            values[key] = _convert(key, types[key], raw, f"config file {config_path}")
    for name, kind in types.items():
        if env_name(name) in environ:
            values[name] = _convert(name, kind, environ[env_name(name)], f"env {env_name(name)}")
        cli_value = getattr(args, name)
        if cli_value is not None:
            values[name] = _convert(name, kind, cli_value, f"flag {flag_name(name)}")
    return Settings(**values).validate()


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env, flag, default, meaning) rows, used to write docs/service.md."""
    return [(env_name(f.name), flag_name(f.name), repr(f.default), f.metadata["help"]) for f in fields(Settings)]
