"""Service settings: one frozen pydantic-settings model, built once in ``main()`` and passed down.

Sources, lowest precedence first: defaults < YAML file (``--config`` / ``TEXTCLF_CONFIG``) <
environment (``TEXTCLF_<NAME>``) < command-line flags (``--<name-with-dashes>``; booleans
``--<name>`` / ``--no-<name>``). ``load_settings`` reads them with pydantic-settings' sources (YAML
file, environment, CLI) and lets pydantic-settings merge them; ``Settings(...)`` on its own reads
nothing but its arguments (tests and embedding code get the defaults plus what they pass, whatever
the process environment holds). Construction validates: field types, then the cross-field rules of
``Settings._problems``; any failure raises ``SettingsError`` with one line per bad setting, naming
the setting and, from ``load_settings``, where its value came from (``config file F``,
``env TEXTCLF_X``, ``flag --x``). Nothing is parsed at import time.

Three hooks of pydantic-settings beyond its documented surface are used, hence its exact pin in
pyproject.toml (tests/service/test_settings.py covers each): ``EnvSettingsSource._load_env_vars``
(the environment comes from ``load_settings``' ``environ``), ``CliSettingsSource``'s
``_env_settings_source`` (``--help`` names TEXTCLF_X) and ``BaseSettings``' ``_build_sources`` (our
sources instead of ``settings_customise_sources``', which are only the arguments).
"""
from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (BaseSettings, CliSettingsSource, EnvSettingsSource, PydanticBaseSettingsSource,
                               SettingsConfigDict, YamlConfigSettingsSource)

ENV_PREFIX = "TEXTCLF_"
PROVIDERS = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_CONTROL_TOKEN_CHARS = 16


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message says which and why."""


class _Problems(ValueError):
    """Raised by the cross-field check with (setting, message) pairs; ``Settings`` turns it into a SettingsError."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    return Field(default, description=help_text, **extra)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # names as written: `port` in arguments and YAML, TEXTCLF_PORT in the environment (see _Environment)
        env_prefix=ENV_PREFIX, case_sensitive=True, frozen=True, extra="forbid",
        # numbers in YAML (`tracing_service_name: 2024`) are fine as strings, as they were
        coerce_numbers_to_str=True)

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
    control_token: str = _opt("", "bearer token for the repository RPCs (at least 16 characters; prefer the env or a "
                                  "file to a flag)", repr=False)
    control_token_file: str = _opt("", "file holding the repository-control bearer token (surrounding whitespace ignored)")
    warmup: bool = _opt(True, "run warm-up inferences before a model version receives traffic")
    # Runtime
    providers: str = _opt("auto", "onnxruntime execution provider: auto, cpu or cuda")
    intra_op_threads: int = _opt(1, "onnxruntime intra-op threads per session (0 = onnxruntime default: one per core); "
                                    "1 serves best beside the event loop on CPU (docs/benchmarks.md)")
    inter_op_threads: int = _opt(0, "onnxruntime inter-op threads per session (0 = onnxruntime default)")
    intra_op_spinning: bool = _opt(False, "let idle onnxruntime intra-op threads spin-wait for work (burns CPU the "
                                          "gRPC event loop needs; on only for dedicated inference cores)")
    inference_workers: int = _opt(1, "onnxruntime batches computing at once, shared by all models (with batching off: "
                                     "the threads running requests)")
    # Batching
    batching: bool = _opt(True, "dynamic batching across concurrent requests (off = each request runs alone)")
    max_batch_size: int = _opt(64, "most texts in one onnxruntime call")
    # 21 texts of 384 tokens, 32 ms of onnxruntime for the BBC LSTM on one thread; smaller caps cost
    # long-text throughput at c=64 through the server (docs/service.md "Batching design")
    max_batch_tokens: int = _opt(
        8192, "most padded tokens (texts x longest text) in one onnxruntime call, so a request of many long texts is "
              "computed in slices and other requests get in between (0 = no cap; a single longer text still runs)")
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
    grpc_intake_depth: int = _opt(
        4, "calls requested from gRPC core at once per method: grpcio requests one and takes the next only after "
           "it arrived, so under load one event-loop turn takes one call; deeper lets a turn take several "
           "(1 = grpcio's own intake)")
    max_concurrent_streams: int = _opt(
        128, "concurrent calls (HTTP/2 streams) one client connection may open; more wait in the client, none is "
             "refused (gRPC core gets as many again as headroom for calls being released; 0 = gRPC default, unlimited)")
    max_request_bytes_in_flight: int = _opt(
        8 * 1024 * 1024, "bytes of large requests (over 64 KiB each) parsed and handled at once per process; beyond it "
                         "a unary request gets RESOURCE_EXHAUSTED before it is parsed and a stream's message waits for "
                         "room (one is always taken when none is in flight; 0 = no limit)")
    refuse_unread_after: int = _opt(
        2, "large requests of one connection refused by max_request_bytes_in_flight, each within 1 s of the one "
           "before, after which its unary calls are refused before their message is read, for 1 s and while one "
           "of that size would not fit (0 = off; behind a proxy that reuses its upstream connections for different "
           "clients, set client_connection_header)")
    client_connection_header: str = _opt(
        "", "metadata key a proxy in front sets to the client's own connection (the compose deployment's nginx: "
            "x-client-connection = its address:port); refuse_unread_after then counts per client connection instead "
            "of per proxy connection (empty = the connection the call came on; set it only where every call comes "
            "through that proxy, since a client reaching the server directly can set any value)")
    refuse_unread_delay_ms: float = _opt(
        250.0, "a call refused before its message was read (refuse_unread_after) is answered after this delay, so a "
               "client that retries at once comes back at most this often per open call (at most 64 calls held at "
               "once per process, the rest answered at once; 0 = at once)")
    grpc_event_engine_io: bool = _opt(
        False, "run gRPC core's socket I/O on its EventEngine thread pool (gRPC's default), which adds a thread at "
               "most once a second while all its workers are busy and keeps it while traffic goes on; off, the I/O "
               "runs on the poller thread grpcio's asyncio server already has, and bursts of large messages add no "
               "thread (set at process start through GRPC_EXPERIMENTS; flags the caller's GRPC_EXPERIMENTS names win)")
    tokenize_workers: int = _opt(1, "threads tokenizing requests too large to tokenize on the event loop (all models)")
    tokenize_max_backlog_texts: int = _opt(
        256, "texts queued for or in the tokenizer threads; beyond it such requests get RESOURCE_EXHAUSTED "
             "(a request arriving when they are idle is always taken)")
    malloc_arena_max: int = _opt(
        2, "glibc malloc arenas of a server process, set at start (0 = glibc's default, 8 per core; a MALLOC_ARENA_MAX "
           "in the environment wins): few arenas keep memory freed after bursts of large requests returnable")
    memory_trim_mb: int = _opt(
        64, "when RSS is this many MB over its value at start, return freed memory to the OS (glibc malloc_trim, "
            "checked once a second by one thread; 0 = off)")
    idle_spin_us: int = _opt(
        2000, "microseconds the event loop polls instead of sleeping after activity while no call is being handled, so a "
              "lone caller's next request finds its core awake (up to that much CPU after each burst, most of a core at "
              "a few hundred sparse calls/s; 0 = off, as the compose and k8s deployments set it)")
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

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) takes its arguments only; load_settings passes its own sources
        return (init_settings,)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            sources = values.get("_build_sources")
            raise SettingsError(_describe(exc, sources[0] if sources else ())) from None

    @field_validator("*", mode="before")
    @classmethod
    def _read_like_before(cls, value: Any, info: ValidationInfo) -> Any:
        # what pydantic's lax mode would take but the settings never did: true/false as a number
        kind = cls.model_fields[info.field_name].annotation if info.field_name else None
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError("expected an integer" if kind is int else "expected a number")
        if kind is bool and isinstance(value, str):
            return value.strip()
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        problems = self._problems()
        if problems:
            raise _Problems(problems)
        return self

    def _problems(self) -> list[tuple[str, str]]:
        """The cross-field and range rules: (setting, message) for each one broken."""
        errors: list[tuple[str, str]] = []

        def check(ok: bool, name: str, requirement: str) -> None:
            if not ok:
                errors.append((name, f"{name}={getattr(self, name)!r}: {requirement}"))

        for name in ("port", "metrics_port", "rest_port"):
            low = -1 if name in ("metrics_port", "rest_port") else 0
            check(low <= getattr(self, name) <= 65535, name, f"must be in [{low}, 65535]")
        for name in ("max_receive_message_bytes", "max_send_message_bytes", "max_batch_size", "max_queue_size",
                     "max_texts_per_request", "max_text_bytes", "stream_max_in_flight", "inference_workers",
                     "max_queue_tokens", "workers", "tokenize_workers", "tokenize_max_backlog_texts",
                     "rest_max_connections", "grpc_intake_depth"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("max_versions", "intra_op_threads", "inter_op_threads", "grpc_max_pending_requests",
                     "grpc_max_pending_requests_hard_limit", "grpc_max_unrequested_seconds", "max_concurrent_rpcs",
                     "max_concurrent_streams", "max_batch_tokens", "memory_trim_mb", "max_request_bytes_in_flight",
                     "refuse_unread_after", "idle_spin_us",
                     "malloc_arena_max"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("poll_interval", "max_queue_delay_ms", "refuse_unread_delay_ms", "grace_period", "drain_delay", "max_connection_age_seconds",
                     "max_connection_age_grace_seconds", "max_connection_idle_seconds"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.rest_idle_timeout > 0, "rest_idle_timeout", "must be > 0")
        check(not self.client_connection_header or (
              re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", self.client_connection_header) is not None
              and not self.client_connection_header.startswith("grpc-")
              and not self.client_connection_header.endswith("-bin")),
              "client_connection_header", "must be a lowercase gRPC metadata key such as x-client-connection "
              "(letters, digits, '-', '_', '.'; not grpc-*, not *-bin)")
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
            errors.append(("control_token", "control_token and control_token_file: set one, not both"))
        if self.control_token and len(self.control_token.strip()) < MIN_CONTROL_TOKEN_CHARS:
            errors.append(("control_token", f"control_token: must be at least {MIN_CONTROL_TOKEN_CHARS} characters"))
        if self.repository_control and not (self.control_token or self.control_token_file):
            errors.append(("repository_control",
                           f"repository_control=True: needs a bearer token: set control_token "
                           f"({env_name('control_token')}) or control_token_file ({env_name('control_token_file')})"))
        return errors

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
        """A copy with ``changes``, validated as a new Settings (SettingsError if the result is invalid)."""
        return type(self)(**{**self.model_dump(), **changes})


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# what today's messages said a value should have been, by pydantic error type
_EXPECTED = {"int_parsing": "expected an integer", "int_from_float": "expected an integer", "int_type": "expected an integer",
             "float_parsing": "expected a number", "float_type": "expected a number",
             "bool_parsing": "expected true/false", "bool_type": "expected true/false",
             "string_type": "expected a string"}


def _origin(sources: Sequence[PydanticBaseSettingsSource]) -> Callable[[str], str]:
    """Where a setting's value came from: the first (highest-precedence) source that has it ('' = an argument)."""
    values = [(source, source()) for source in sources]

    def origin(name: str) -> str:
        for source, given in values:
            if name in given:
                if isinstance(source, _YamlFile):
                    return f"config file {source.path}"
                if isinstance(source, CliSettingsSource):  # before EnvSettingsSource: its subclass
                    return f"flag {flag_name(name)}"
                if isinstance(source, EnvSettingsSource):
                    return f"env {env_name(name)}"
        return ""

    return origin


def _describe(exc: ValidationError, sources: Sequence[PydanticBaseSettingsSource]) -> str:
    """One line per bad setting, naming it and where its value came from."""
    origin = _origin(sources)
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            for name, message in cause.problems:
                where = origin(name)
                lines.append(f"{message} (from {where})" if where else message)
            continue
        name = str(error["loc"][0]) if error["loc"] else "settings"
        where = origin(name)
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting {name!r}" if where else f"unknown setting {name!r}")
            continue
        reason = str(cause) if cause is not None else _EXPECTED.get(error["type"], error["msg"])
        shown = "(hidden)" if name == "control_token" else repr(error["input"])
        lines.append(f"{name}{' from ' + where if where else ''}: cannot read {shown} ({reason})")
    return "invalid settings:\n  " + "\n  ".join(lines)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source (prefix TEXTCLF_) over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        # case-insensitive matching of the prefixed names, fed only the exact TEXTCLF_<NAME> variables
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): self._environ[name] for name in map(env_name, self.settings_cls.model_fields)
                if name in self._environ}


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source for one file that must exist, with `-` or `_` in its keys."""

    def __init__(self, settings_cls: type[BaseSettings], path: str) -> None:
        self.path = path
        try:  # the YAML source would skip a missing file silently
            is_file = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror}") from None
        if not is_file:
            raise SettingsError(f"config file {path}: {'Is a directory' if Path(path).is_dir() else 'not a file'}")
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import yaml

        try:
            data = super()._read_file(file_path)
        except OSError as exc:
            raise SettingsError(f"config file {self.path}: {exc.strerror}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {self.path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise SettingsError(f"config file {self.path}: expected a mapping of setting names to values")
        return {str(key).replace("-", "_"): value for key, value in data.items()}


def _parser(environment: _Environment) -> tuple[argparse.ArgumentParser, CliSettingsSource[Settings]]:
    """The `textclf serve` flags: ``--config`` and, from pydantic-settings' CLI source, one for every setting."""
    parser = argparse.ArgumentParser(prog="textclf serve", description="Serve a model repository over gRPC.")
    parser.add_argument("--config", help=f"YAML settings file (also {ENV_PREFIX}CONFIG)")
    # cli_parse_none_str: the CLI source's default reads a flag value "null" as None; an argument
    # cannot hold a NUL character, so no value is. The environment source names TEXTCLF_X in --help.
    flags = CliSettingsSource(Settings, root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True,
                              cli_show_env_vars=True, cli_parse_none_str="\0", _env_settings_source=environment)
    return parser, flags


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from defaults, a YAML file, the environment and ``argv``."""
    environ = os.environ if environ is None else environ
    environment = _Environment(Settings, environ)
    parser, flags = _parser(environment)
    args = parser.parse_args(list(argv or []))  # a malformed command line: argparse's message, exit code 2
    sources: list[PydanticBaseSettingsSource] = [flags(parsed_args=args), environment]
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        sources.append(_YamlFile(Settings, config_path))
    # highest precedence first; pydantic-settings merges them over the defaults
    return Settings(_build_sources=(tuple(sources), {}))


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env, flag, default, meaning) rows, used to write docs/service.md."""
    return [(env_name(name), flag_name(name), repr(f.default), f.description or "")
            for name, f in Settings.model_fields.items()]
