"""Serving benchmark (issue 3): both gRPC APIs, batching on/off, and the in-process ceiling, one run.

    .venv/bin/python bench/bench_serving.py                      # full run, a few minutes
    .venv/bin/python bench/bench_serving.py --quick              # smoke check, < 1 minute
    .venv/bin/python bench/bench_serving.py --repository models --model news --seconds 5

Starts ``python -m service`` itself (127.0.0.1, free ports, health-checked), drives closed-loop
load from separate client processes (bench/serving_load.py) at each concurrency with single-text
requests of short (~40 tokens) and long (~300 tokens) texts, then restarts the server with
batching off, then measures the in-process onnxruntime ceiling with the same thread count.
Writes bench/results/serving.json and bench/results/serving_latency.png; see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving_report as report  # noqa: E402
import serving_support as support  # noqa: E402
from serving_load import WorkerSpec  # noqa: E402

logger = logging.getLogger("bench.serving")

LOAD_SCRIPT = Path(__file__).resolve().parent / "serving_load.py"
WORKER_TIMEOUT_S = 120.0
FLOOR_KINDS = {"grpc-floor": "aio", "grpc-floor-deep": "aio-deep", "grpc-floor-sync": "sync"}
SERVER_BASE_ENV = dict(os.environ)  # the servers get the caller's environment (+ --server-env), untouched


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models", help="model repository (default: models/)")
    p.add_argument("--model", default="news", help="model name in the repository (default: news)")
    p.add_argument("--texts-jsonl", type=Path, help="JSONL with a 'text' field (default: the BBC News corpus)")
    p.add_argument("--short-tokens", type=int, default=40)
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--num-texts", type=int, default=64, help="distinct texts per length")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured window")
    p.add_argument("--workers", type=int, default=2,
                   help="server processes (`--workers`) of mode textclf-workers (default 2)")
    p.add_argument("--client-channels", type=int, default=1,
                   help="connections per client process, callers spread over them (mode textclf-workers uses at "
                        "least min(c, 8): SO_REUSEPORT spreads connections, not calls)")
    p.add_argument("--multi-texts", type=int, default=8,
                   help="texts per request of mode textclf-multi (default 8)")
    p.add_argument("--client-procs", type=int, default=1,
                   help="client processes sharing a cell's concurrency (default 1: one grpc.aio process)")
    p.add_argument("--modes", nargs="+", default=list(report.MODE_LABELS), choices=list(report.MODE_LABELS))
    p.add_argument("--triton-concurrency", type=int, nargs="*", default=None,
                   help="concurrencies for kserve-triton, short texts only (default: lowest and highest)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads, server and ceiling alike (default 1, the server's default; "
                        "0 = onnxruntime default)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `python -m service` flag for both servers, e.g. --server-arg=--max-queue-delay-ms=1")
    p.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server processes")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 32, 64, 128],
                   help="batch sizes tried for the in-process ceiling")
    p.add_argument("--ceiling-seconds", type=float, default=1.0, help="seconds per in-process measurement")
    p.add_argument("--skip-ceiling", action="store_true", help="served cells only (for tuning sweeps; no ratios)")
    p.add_argument("--traced-sample-ratios", type=float, nargs="+", default=[1.0],
                   help="mode textclf-traced: tracing_sample_ratio of its server(s), one server per value")
    p.add_argument("--quick", action="store_true", help="smoke check: short cells, fewer concurrencies")
    p.add_argument("--output", type=Path, help="JSON path (default bench/results/serving.json, "
                                               "serving-quick.json with --quick)")
    p.add_argument("--plot", type=Path, help="PNG path (default bench/results/serving_latency.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.num_texts, args.ceiling_seconds = 1.0, 0.3, 16, 0.3
        args.concurrency, args.batch_sizes = [1, 8], [1, 16]
        args.triton_concurrency = args.triton_concurrency or []
    if args.triton_concurrency is None:
        args.triton_concurrency = [min(args.concurrency), max(args.concurrency)]
    results = ROOT / "bench" / "results"
    args.output = args.output or results / ("serving-quick.json" if args.quick else "serving.json")
    args.plot = args.plot or results / ("serving_latency-quick.png" if args.quick else "serving_latency.png")
    return args


# ----------------------------------------------------------------------------- load cells

def launch_worker(spec: WorkerSpec) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(LOAD_SCRIPT)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None
    process.stdin.write(json.dumps(asdict(spec)) + "\n")
    process.stdin.flush()
    return process


def await_line(process: subprocess.Popen, expected: str | None = None) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line or (expected is not None and line.strip() != expected):
        process.kill()
        raise RuntimeError(f"load worker failed (exit {process.wait()}): got {line!r}")
    return line


def run_cell(server: support.ServerProcess, api: str, model: str, texts: list[str], concurrency: int,
             args: argparse.Namespace, min_channels: int = 0, texts_per_request: int = 1,
             text_dims: int = 1) -> list[dict[str, Any]]:
    """One (api, length, concurrency) cell from ``client_procs`` worker processes sharing one window."""
    procs = max(1, min(args.client_procs, concurrency))
    shares = [concurrency // procs + (1 if k < concurrency % procs else 0) for k in range(procs)]
    channels = args.client_channels if api != "kserve-triton" else 1
    if min_channels:
        channels = max(channels, min(concurrency, min_channels))
    workers = [launch_worker(WorkerSpec(address=server.address, api=api, model=model, texts=texts,
                                        concurrency=share, seconds=args.seconds, offset=k * 7919,
                                        server_pid=server.pid, metrics_url=server.metrics_url,
                                        channels=max(1, min(channels, share)), texts_per_request=texts_per_request,
                                        text_dims=text_dims,
                                        rest_address=f"127.0.0.1:{getattr(args, 'rest_port', 0)}"))
               for k, share in enumerate(shares)]
    try:
        for worker in workers:
            await_line(worker, "ready")
        t0 = time.monotonic() + args.warmup
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{t0!r}\n")
            worker.stdin.flush()
        results = [json.loads(await_line(worker)) for worker in workers]
        for worker in workers:
            worker.wait(WORKER_TIMEOUT_S)
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def run_server_modes(batching: bool, modes: list[str], texts: dict[str, list[str]], bundle: support.Bundle,
                     args: argparse.Namespace, log_dir: Path, workers: int = 1,
                     server_args: list[str] | None = None) -> list[dict[str, Any]]:
    env = {**SERVER_BASE_ENV, **dict(item.split("=", 1) for item in args.server_env)}
    logger.info("starting server (batching %s, %d worker process(es))", "on" if batching else "off", workers)
    extra = [*args.server_arg, *(["--workers", str(workers)] if workers > 1 else []), *(server_args or [])]
    server = support.start_server(bundle.repository, batching=batching, threads=args.threads,
                                  extra_args=extra, env=env, log_dir=log_dir)
    try:
        logger.info("server pid %d on %s: %s", server.pid, server.address, " ".join(server.command[1:]))
        return run_modes_on(server, modes, texts, bundle.name, args)
    finally:
        server.stop()


def run_traced_mode(texts: dict[str, list[str]], bundle: support.Bundle, args: argparse.Namespace,
                    log_dir: Path) -> list[dict[str, Any]]:
    """Mode textclf-traced: tracing on, spans exported over OTLP/gRPC to a collector in this process
    that counts and discards them; one server per ``--traced-sample-ratios`` value (cells of a
    ratio below 1 are reported as mode ``textclf-traced@<ratio>``)."""
    cells: list[dict[str, Any]] = []
    for ratio in args.traced_sample_ratios:
        collector = support.DiscardingCollector()
        try:
            ratio_cells = run_server_modes(True, ["textclf-traced"], texts, bundle, args, log_dir, server_args=[
                "--tracing-otlp-endpoint", f"http://127.0.0.1:{collector.port}", "--tracing-sample-ratio", str(ratio)])
        finally:
            collector.stop()
        logger.info("sample ratio %g: the OTLP collector received %d spans", ratio, collector.spans)
        for cell in ratio_cells:
            cell["spans_exported_total"], cell["tracing_sample_ratio"] = collector.spans, ratio
            if ratio != 1:
                cell["mode"] = f"textclf-traced@{ratio:g}"
        cells += ratio_cells
    return cells


def run_floor_mode(mode: str, texts: dict[str, list[str]], model: str, args: argparse.Namespace,
                   log_dir: Path) -> list[dict[str, Any]]:
    """The same cells against bench/grpc_floor_server.py: the gRPC stack with no model behind it."""
    kind = FLOOR_KINDS[mode]
    logger.info("starting the gRPC floor server (%s, no model)", kind)
    server = support.start_floor_server(kind, log_dir)
    try:
        return run_modes_on(server, [mode], texts, model, args)
    finally:
        server.stop()


def run_modes_on(server: support.ServerProcess, modes: list[str], texts: dict[str, list[str]], model: str,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    for mode in modes:
        api = mode if mode in ("kserve", "kserve-triton", "textclf-stream", "kserve-rest") else "textclf"
        min_channels = 8 if mode == "textclf-workers" else 0
        per_request = args.multi_texts if mode == "textclf-multi" else 1
        for length, pool in texts.items():
            concurrencies = args.concurrency
            if mode == "kserve-triton":
                concurrencies = args.triton_concurrency if length == "short" else []
            for concurrency in concurrencies:
                results = run_cell(server, api, model, pool, concurrency, args, min_channels, per_request)
                cell = report.summarize_cell(mode, length, concurrency, results, per_request)
                cells.append(cell)
                log_cell(cell)
    return cells


def log_cell(cell: dict[str, Any]) -> None:
    logger.info("%-16s %-5s c=%-3d %8.1f req/s %8.1f texts/s  p50 %7.2f  p99 %7.2f ms  batch %s  server %s%% "
                "client %.0f%% others %.0f%%  errors %s", cell["mode"], cell["length"], cell["concurrency"],
                cell["throughput_rps"], cell["texts_per_s"], cell["p50_ms"], cell["p99_ms"], f"{cell['mean_batch']:.1f}" if "mean_batch" in cell else "-",
                f"{cell['server_cpu_pct']:.0f}" if cell.get("server_cpu_pct") is not None else "?",
                cell["client_cpu_pct"], cell["other_cpu_pct"], cell["errors"] or 0)


# ----------------------------------------------------------------------------- run

def measure_ceilings(bundle: support.Bundle, texts: dict[str, list[str]], args: argparse.Namespace,
                     label: str) -> dict[str, dict[str, Any]]:
    """The in-process ceiling; measured before and after the served cells (the best of both is used,
    so that load from other processes on the machine does not flatter the served numbers)."""
    logger.info("in-process ceiling, %s the served cells (threads=%d, batch sizes %s)", label, args.threads,
                args.batch_sizes)
    return {length: support.measure_in_process(bundle, pool, threads=args.threads, batch_sizes=args.batch_sizes,
                                               seconds=args.ceiling_seconds) for length, pool in texts.items()}


def prepare_texts(bundle: support.Bundle, args: argparse.Namespace) -> tuple[dict[str, list[str]], dict[str, Any]]:
    from bundle.tokenization import TextEncoder

    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    source = support.jsonl_texts(args.texts_jsonl) if args.texts_jsonl else support.bbc_corpus_texts()
    texts = {"short": support.make_texts(encoder, source, args.short_tokens, args.num_texts, seed=1),
             "long": support.make_texts(encoder, source, args.long_tokens, args.num_texts, seed=2)}
    stats = {length: support.token_stats(encoder, pool) for length, pool in texts.items()}
    return texts, stats


def machine_info() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    import grpc
    import onnxruntime

    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
            "gpu": "none used (CPUExecutionProvider)", "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__, "loadavg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    # in-process tokenization: sequential (HF tokenizers' thread pool fights onnxruntime's spinning
    # threads on 2 cores and can make a single-text encode 5-20x slower); this is the faster setting
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    logger.info("model %s/%d from %s%s", bundle.name, bundle.version, bundle.path,
                " (RANDOM WEIGHTS, default architecture)" if bundle.synthetic else "")
    texts, text_stats = prepare_texts(bundle, args)
    for length, stats in text_stats.items():
        logger.info("%s texts: %d, raw tokens %.1f (%d..%d), model sees %.1f (max_len %s)", length, stats["count"],
                    stats["raw_tokens_mean"], stats["raw_tokens_min"], stats["raw_tokens_max"],
                    stats["model_tokens_mean"], bundle.card.max_len)
    info = machine_info()
    before = {} if args.skip_ceiling else measure_ceilings(bundle, texts, args, "before")
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="textclf-bench-logs-") as log_dir:
        separate = ("textclf-nobatch", "textclf-workers", "textclf-traced", "kserve-rest", *FLOOR_KINDS)
        on_modes = [m for m in args.modes if m not in separate]
        if on_modes:
            cells += run_server_modes(True, on_modes, texts, bundle, args, Path(log_dir))
        if "textclf-workers" in args.modes:
            cells += run_server_modes(True, ["textclf-workers"], texts, bundle, args, Path(log_dir), args.workers)
        if "textclf-nobatch" in args.modes:
            cells += run_server_modes(False, ["textclf-nobatch"], texts, bundle, args, Path(log_dir))
        if "textclf-traced" in args.modes:
            cells += run_traced_mode(texts, bundle, args, Path(log_dir))
        if "kserve-rest" in args.modes:
            args.rest_port = support.free_port()
            cells += run_server_modes(True, ["kserve-rest"], texts, bundle, args, Path(log_dir), server_args=[
                "--rest-host", "127.0.0.1", "--rest-port", str(args.rest_port)])
        for mode in (m for m in args.modes if m in FLOOR_KINDS):
            cells += run_floor_mode(mode, texts, bundle.name, args, Path(log_dir))
    after = {} if args.skip_ceiling else measure_ceilings(bundle, texts, args, "after")
    ceilings = {length: support.best_of(before[length], after[length]) for length in before}
    ratios = report.ratios_and_goals(cells, ceilings, max(args.concurrency), min(args.concurrency))
    info["loadavg_end"] = os.getloadavg()
    output = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.monotonic() - started,
        "machine": info,
        "model": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path),
                  "synthetic_random_weights": bundle.synthetic, "architecture": bundle.card.to_dict().get("architecture"),
                  "max_len": bundle.card.max_len},
        "settings": {"ceiling_tokenizers_parallelism": os.environ["TOKENIZERS_PARALLELISM"], "threads": args.threads, "server_args": args.server_arg, "server_env": args.server_env,
                     "seconds": args.seconds, "warmup": args.warmup, "client_procs": args.client_procs,
                     "client_channels": args.client_channels, "workers": args.workers,
                     "concurrency": args.concurrency},
        "texts": text_stats, "modes": {m: report.MODE_LABELS[m] for m in args.modes},
        "cells": cells, "ceiling": ceilings, "ceiling_passes": {"before": before, "after": after}, "ratios": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2, default=str) + "\n")
    if not args.no_plot and ceilings:
        report.plot(cells, ceilings, args.plot)
    print("\n" + report.format_table(cells) + "\n\n" + report.format_ceiling(ceilings) + "\n\n"
          + report.format_ratios(ratios))
    print(f"\nwrote {args.output}" + ("" if args.no_plot or not ceilings else f" and {args.plot}")
          + f" in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
