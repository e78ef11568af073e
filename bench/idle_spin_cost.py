"""What the event loop's polling between calls (``idle_spin_us``) costs at sparse, steady load.

``idle_spin_us`` (docs/service.md "The event loop between a lone caller's calls") keeps the loop
polling for up to the window after each spell of calls instead of sleeping: a lower c=1 latency,
paid in CPU on a core that would otherwise sleep. That CPU is what a replica's CPU quota
(Kubernetes ``limits.cpu``, compose ``cpus``) and a CPU-utilisation autoscaler see. This script
measures it: one ``python -m service`` per variant (default window and ``--idle-spin-us 0``),
interleaved, each taking ``--clients`` paced closed-loop callers of single short texts at each
``--rates`` (req/s), and reports per cell the server's CPU (cores), the seconds spent polling
(``textclf_event_loop_spin_seconds_total``) and the latency p50/p99.

    python bench/idle_spin_cost.py --repository models --output bench/results/idle_spin_cost.json
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
from bench_hostile import Sampler, load_texts, paced_closed_loop  # noqa: E402
from open_loop import CHANNEL_OPTIONS, make_caller  # noqa: E402
from tests.support.metrics import metric, scrape  # noqa: E402

logger = logging.getLogger("idle_spin_cost")
SPIN_METRIC = "textclf_event_loop_spin_seconds_total"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--texts-jsonl", type=Path, help="texts ({'text': ...} per line; default: BBC News)")
    p.add_argument("--tokens", type=int, default=40, help="tokens per text")
    p.add_argument("--rates", type=float, nargs="+", default=[20.0, 100.0, 400.0])
    p.add_argument("--clients", type=int, default=4, help="paced callers sharing each rate")
    p.add_argument("--seconds", type=float, default=10.0, help="per cell")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--spin-us", type=int, default=2000, help="the polling window of the first variant")
    p.add_argument("--quick", action="store_true", help="seconds, not minutes: for the test that keeps this alive")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "idle_spin_cost.json")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.reps = [50.0], 1.5, 1
    return args


async def one_cell(server: support.ServerProcess, texts: list[str], args: argparse.Namespace, rate: float) -> dict:
    sampler, stop = Sampler(server.pid), asyncio.Event()
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call = make_caller(channel, "textclf", server.address, args.model, texts)
        spun_before = metric(scrape(server.metrics_url), SPIN_METRIC)
        sampling = asyncio.ensure_future(sampler.run(stop))
        result = await paced_closed_loop(call, args.clients, rate, args.seconds)
        stop.set()
        await sampling
        spun = metric(scrape(server.metrics_url), SPIN_METRIC) - spun_before
    return {**result, "rate": rate, "server_cpu_cores": sampler.summary().get("cpu_cores_mean", float("nan")),
            "spin_cores": spun / args.seconds}


def format_table(cells: list[dict]) -> str:
    lines = ["| rate (req/s) | idle_spin_us | server CPU (cores) | of it polling (cores) | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for cell in sorted(cells, key=lambda c: (c["rate"], -c["spin_us"], c["rep"])):
        errors = {k: v for k, v in cell["codes"].items() if k != "OK"}
        lines.append(f"| {cell['rate']:.0f} | {cell['spin_us']} | {cell['server_cpu_cores']:.3f} | {cell['spin_cores']:.3f} "
                     f"| {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {errors or 0} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    texts = load_texts(args, bundle)  # reads texts_jsonl, tokens, quick
    log_dir = Path(tempfile.mkdtemp(prefix="bench-idle-spin-"))
    started, load_start = time.time(), os.getloadavg()
    cells: list[dict] = []
    server = None
    for rep in range(args.reps):
        for spin_us in (args.spin_us, 0):
            server = support.start_server(bundle.repository, batching=True, threads=1,
                                          extra_args=[f"--idle-spin-us={spin_us}"], env=dict(os.environ),
                                          log_dir=log_dir)
            try:
                for rate in args.rates:
                    cell = asyncio.run(one_cell(server, texts, args, rate))
                    cells.append({**cell, "spin_us": spin_us, "rep": rep})
                    logger.info("rep %d, idle_spin_us %d, %.0f req/s: server %.3f cores (polling %.3f), p50 %.2f ms",
                                rep + 1, spin_us, rate, cell["server_cpu_cores"], cell["spin_cores"], cell["p50_ms"])
            finally:
                server.stop()
    report = support.run_report("idle_spin_cost.py", argv, started, load_start, bundle, args, server, {"cells": cells})
    support.write_json(args.output, report)
    print(format_table(cells))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
