"""Overload benchmark (issue 5, not in CI): a bounded queue under 2x the sustainable load.

1. starts ``python -m service`` with a small ``--max-queue-size``;
2. measures the sustainable load: closed loop (``--concurrency`` callers, single-text requests);
3. offers open-loop load (fixed arrival rate, bounded duration) at each ``--factors`` x that
   capacity (default 0.8, 1 and 2);
4. reports per factor: achieved/admitted rate, the fraction answered RESOURCE_EXHAUSTED, how fast
   rejections come back (p50/p99) and the latency of admitted calls (p50/p99), next to 1x.

Asserts nothing; prints a table and writes JSON (default bench/results/overload.json).

    python bench/bench_overload.py --repository models --seconds 10
    python bench/bench_overload.py --repository /tmp/bench-models --seconds 6 --api kserve
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

import serving_support as support  # noqa: E402
from open_loop import CHANNEL_OPTIONS, make_caller, measure_capacity, open_loop  # noqa: E402

logger = logging.getLogger("bench_overload")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--api", choices=["textclf", "kserve"], default="textclf")
    p.add_argument("--tokens", type=int, default=40, help="tokens per text (single-text requests)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop callers for the capacity")
    p.add_argument("--capacity-seconds", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=8.0, help="open-loop duration per factor")
    p.add_argument("--factors", type=float, nargs="+", default=[0.8, 1.0, 2.0])
    p.add_argument("--max-queue-size", type=int, default=64, help="server --max-queue-size (texts)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="server --intra-op-threads")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `python -m service` flag, e.g. --server-arg=--grpc-max-pending-requests=0 (gRPC's "
                        "own defaults: the unbounded-backlog baseline)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    return p.parse_args(argv)


def load_texts(bundle: support.Bundle, tokens: int) -> list[str]:
    from bundle.tokenization import TextEncoder
    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    return support.make_texts(encoder, support.bbc_corpus_texts(), tokens, 64)


async def run(args: argparse.Namespace, server: support.ServerProcess, texts: list[str]) -> dict:
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        capacity = await measure_capacity(channel, args.api, server.address, args.model, texts,
                                          concurrency=args.concurrency, seconds=args.capacity_seconds)
        logger.info("sustainable (closed loop, c=%d): %.0f calls/s, p99 %.1f ms", args.concurrency,
                    capacity["per_s"], capacity["p99_ms"])
        call = make_caller(channel, args.api, server.address, args.model, texts)
        await open_loop(call, capacity["per_s"] * 0.5, 2.0)  # settle into open-loop traffic (not reported)
        rows = []
        for factor in args.factors:
            rate = capacity["per_s"] * factor
            result = await open_loop(call, rate, args.seconds)
            row = {"factor": factor, **result.summary()}
            rows.append(row)
            logger.info("x%.1f: %s", factor, row)
    return {"capacity": capacity, "open_loop": rows}


def format_table(result: dict) -> str:
    cap = result["capacity"]
    lines = [f"sustainable load (closed loop, {cap['concurrency']} callers): {cap['per_s']:.0f} calls/s "
             f"(p50 {cap['p50_ms']:.1f} ms, p99 {cap['p99_ms']:.1f} ms)", "",
             "| offered | calls/s offered | sent/s | admitted OK/s | rejected (RESOURCE_EXHAUSTED) | rejection p50 / p99 ms "
             "| admitted p50 / p99 ms | other errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["open_loop"]:
        lines.append(f"| {r['factor']:.1f}x | {r['offered_per_s']:.0f} | {r['sent_per_s']:.0f} | {r['ok_per_s']:.0f} "
                     f"| {100 * r['rejected_fraction']:.1f} % | {r['rejected_p50_ms']:.2f} / {r['rejected_p99_ms']:.2f} "
                     f"| {r['ok_p50_ms']:.1f} / {r['ok_p99_ms']:.1f} | {r['other_errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    texts = load_texts(bundle, args.tokens)
    extra = ["--max-queue-size", str(args.max_queue_size), "--max-batch-size", str(args.max_batch_size),
             # settings refuse a request limit the queue could never admit
             "--max-texts-per-request", str(min(256, args.max_queue_size)), *args.server_arg]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    started = time.time()
    load_start = os.getloadavg()
    server = support.start_server(bundle.repository, batching=True, threads=args.threads, extra_args=extra,
                                  env={"TOKENIZERS_PARALLELISM": "false"}, log_dir=log_dir)
    try:
        result = asyncio.run(run(args, server, texts))
    finally:
        server.stop()
    report = support.run_report("bench_overload.py", argv, started, load_start, bundle, args, server, result)
    support.write_json(args.output, report)
    print(format_table(result))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
