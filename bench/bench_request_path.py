"""Per-call cost of the request path on a shared machine: server CPU seconds per call and p50/p99,
several server variants interleaved (issue 11).

    .venv/bin/python bench/bench_request_path.py --repository models
    .venv/bin/python bench/bench_request_path.py --variant base=/tmp/textclf-base --variant new=. --floor \
        --concurrency 1 64 --calls 2000 --reps 5

Wall-clock throughput is noise on a machine other jobs share; what a server spends per call is
not. Every variant (``NAME=SOURCE_TREE[:extra server flags]``, ``python -m service`` run from that
tree with this interpreter; default: this tree as ``this``) and with ``--floor`` the gRPC floor
(bench/grpc_floor_server.py, fixed answer, no model) is started once and stays up; then for each
repetition, each concurrency and each variant in turn (the order rotates per repetition) a fixed
number of single-text calls is sent from this process by a ``grpc.aio`` closed loop, and the
server process's CPU time (/proc, all threads) over exactly those calls is divided by their
count (/proc counts in clock ticks of 10 ms: over 1500 calls that is < 1 %; the event-loop
thread's share is reported too). Latency percentiles are of the same calls. The summary gives the median over repetitions
of each quantity per (variant, api, concurrency). Writes bench/results/request_path.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

import serving_support as support  # noqa: E402
from serving_load import CLK_TCK, process_cpu_seconds, scrape_metrics  # noqa: E402

logger = logging.getLogger("bench.request_path")

FLOOR = "floor"


@dataclass
class Variant:
    name: str
    tree: Path | None  # None: the gRPC floor server
    flags: list[str]  # the floor: [its --kind]


def parse_variant(text: str) -> Variant:
    name, _, rest = text.partition("=")
    tree, _, flags = rest.partition(":")
    return Variant(name, Path(tree or ".").resolve(), flags.split())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--variant", action="append", default=[], help="NAME=SOURCE_TREE[:extra server flags]")
    p.add_argument("--floor", action="store_true", help="also the gRPC floor (textclf.v1 Classify only)")
    p.add_argument("--floor-deep", action="store_true",
                   help="also the gRPC floor with the service's deeper call intake (grpc_intake_depth)")
    p.add_argument("--apis", nargs="+", default=["textclf"], choices=["textclf", "kserve"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calls", type=int, default=2000, help="measured calls per cell")
    p.add_argument("--warmup-calls", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=40, help="tokens per text (the short texts of bench_serving)")
    p.add_argument("--texts-jsonl", type=Path, help="JSONL with a 'text' field (default: the BBC News corpus)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "request_path.json")
    args = p.parse_args(argv)
    args.variants = [parse_variant(v) for v in args.variant] or [Variant("this", ROOT, [])]
    if args.floor:
        args.variants.append(Variant(FLOOR, None, ["aio"]))
    if args.floor_deep:
        args.variants.append(Variant(f"{FLOOR}-deep", None, ["aio-deep"]))
    return args


def start(variant: Variant, bundle: support.Bundle, log_dir: Path) -> support.ServerProcess:
    if variant.tree is None:
        return support.start_floor_server(variant.flags[0], log_dir)
    port, metrics_port = support.free_port(), support.free_port()
    command = support.server_command(bundle.repository, port, metrics_port, True, 1, variant.flags)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return support.launch(command, port, f"http://127.0.0.1:{metrics_port}/metrics",
                          log_dir / f"{variant.name}-{port}.log", env, cwd=variant.tree)


def loop_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server's main thread (its asyncio event loop: every handler runs there, so
    under load it is the thread that limits throughput)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_call(channel: grpc.aio.Channel, api: str, model: str, texts: list[str]):
    if api == "textclf":
        from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc

        stub = pb_grpc.TextClassifierStub(channel)
        requests = [pb.ClassifyRequest(model=model, texts=[t]) for t in texts]
        method = stub.Classify
    else:
        from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc

        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests = []
        for t in texts:
            tensor = pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(t.encode())
            requests.append(pb.ModelInferRequest(model_name=model, inputs=[tensor]))
        method = stub.ModelInfer

    async def call(i: int) -> None:
        await method(requests[i % len(requests)], timeout=30.0)

    return call


async def measure(server: support.ServerProcess, api: str, model: str, texts: list[str], concurrency: int,
                  calls: int, warmup: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = make_call(channel, api, model, texts)
        for i in range(warmup):
            await call(i)
        latencies: list[float] = []
        counter = iter(range(calls))

        async def user() -> None:
            for i in counter:
                begin = time.perf_counter()
                await call(i)
                latencies.append((time.perf_counter() - begin) * 1e3)

        metrics0 = scrape_metrics(server.metrics_url)
        loop0, cpu0, t0 = loop_cpu_seconds(server.pid), process_cpu_seconds(server.pid), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall, cpu1, loop1 = time.perf_counter() - t0, process_cpu_seconds(server.pid), loop_cpu_seconds(server.pid)
        metrics1 = scrape_metrics(server.metrics_url)
    array = np.asarray(latencies)
    row = {"server_cpu_ms_per_call": 1e3 * (cpu1 - cpu0) / calls, "loop_cpu_ms_per_call": 1e3 * (loop1 - loop0) / calls,
           "p50_ms": float(np.percentile(array, 50)),
           "p99_ms": float(np.percentile(array, 99)), "wall_rps": calls / wall, "mean_batch": None}
    batches = metrics1.get("textclf_batch_size_count", 0) - metrics0.get("textclf_batch_size_count", 0)
    if batches:
        row["mean_batch"] = (metrics1["textclf_batch_size_sum"] - metrics0["textclf_batch_size_sum"]) / batches
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted({(r["variant"], r["api"], r["concurrency"]) for r in rows}, key=lambda k: (k[1], k[2], k[0]))
    out = []
    for variant, api, concurrency in keys:
        cell = [r for r in rows if (r["variant"], r["api"], r["concurrency"]) == (variant, api, concurrency)]
        summary = {"variant": variant, "api": api, "concurrency": concurrency, "reps": len(cell)}
        for q in ("server_cpu_ms_per_call", "loop_cpu_ms_per_call", "p50_ms", "p99_ms", "wall_rps", "mean_batch"):
            values = [r[q] for r in cell if r.get(q) is not None]
            summary[q] = statistics.median(values) if values else None
        out.append(summary)
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'api':8} {'c':>3} {'variant':14} {'cpu ms/call':>11} {'loop ms/call':>12} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} "
             f"{'batch':>6}"]
    for s in summary:
        batch = "-" if s["mean_batch"] is None else f"{s['mean_batch']:.1f}"
        lines.append(f"{s['api']:8} {s['concurrency']:>3} {s['variant']:14} {s['server_cpu_ms_per_call']:>11.3f} "
                     f"{s['loop_cpu_ms_per_call']:>12.3f} "
                     f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['wall_rps']:>7.0f} {batch:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    from bundle.tokenization import TextEncoder

    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    source = support.jsonl_texts(args.texts_jsonl) if args.texts_jsonl else support.bbc_corpus_texts()
    texts = support.make_texts(encoder, source, args.tokens, 64, seed=1)
    rows: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="textclf-request-path-") as log_dir:
        servers: dict[str, support.ServerProcess] = {}
        try:
            for variant in args.variants:
                servers[variant.name] = start(variant, bundle, Path(log_dir))
            for rep in range(args.reps):
                order = args.variants[rep % len(args.variants):] + args.variants[:rep % len(args.variants)]
                for api in args.apis:
                    for concurrency in args.concurrency:
                        for variant in order:
                            if variant.tree is None and api != "textclf":
                                continue
                            server = servers[variant.name]
                            row = asyncio.run(measure(server, api, bundle.name, texts, concurrency, args.calls,
                                                      args.warmup_calls))
                            row.update(variant=variant.name, api=api, concurrency=concurrency, rep=rep)
                            rows.append(row)
                            logger.info("rep %d %-7s c=%-3d %-14s cpu %.3f (loop %.3f) ms/call  p50 %.2f  p99 %.2f ms  %.0f req/s  "
                                        "batch %s", rep, api, concurrency, variant.name, row["server_cpu_ms_per_call"], row["loop_cpu_ms_per_call"],
                                        row["p50_ms"], row["p99_ms"], row["wall_rps"], row["mean_batch"])
        finally:
            for server in servers.values():
                server.stop()
    summary = summarize(rows)
    output = {"command": "python bench/bench_request_path.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
              "variants": [{"name": v.name, "tree": str(v.tree), "flags": v.flags} for v in args.variants],
              "summary": summary, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print("\n" + format_table(summary) + f"\n\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
