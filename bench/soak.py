"""Soak benchmark (issue 5, not in CI): ~80 % of the measured capacity for minutes.

1. starts ``python -m service``; measures the capacity (closed loop, ``--concurrency`` callers);
2. offers ``--load`` x capacity as an open loop (fixed arrival rate) for ``--minutes``;
3. samples the server's resident memory (psutil, every ``--sample-seconds``) and the latency of
   the calls finished in each sample window;
4. reports errors (expected 0) and the RSS growth after warm-up (the first ``--warmup-fraction``
   of the run): (median of the last 3 samples - median of the 3 samples at the end of warm-up)
   / the latter, expected < 5 %; writes JSON and a PNG of RSS and latency over time.

    python bench/soak.py --repository models --minutes 10
    python bench/soak.py --repository /tmp/bench-models --minutes 2      # a short run
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import psutil  # noqa: E402

import serving_support as support  # noqa: E402
from bench_overload import load_texts  # noqa: E402
from open_loop import CHANNEL_OPTIONS, CallRecord, make_caller, measure_capacity, open_loop  # noqa: E402

logger = logging.getLogger("soak")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--api", choices=["textclf", "kserve"], default="textclf")
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    p.add_argument("--rate", type=float, default=0.0,
                   help="calls/s to offer instead of --load x capacity (compare servers at the same load)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop callers for the capacity")
    p.add_argument("--capacity-seconds", type=float, default=5.0)
    p.add_argument("--sample-seconds", type=float, default=3.0)
    p.add_argument("--warmup-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1, help="server --intra-op-threads")
    p.add_argument("--server-arg", action="append", default=[], help="extra `python -m service` flag")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "results" / "soak.png")
    return p.parse_args(argv)


class Sampler:
    """Every ``period`` seconds: server RSS, threads and open file descriptors, and the latencies of
    the calls finished since the last sample."""

    def __init__(self, pid: int, period: float) -> None:
        self.process = psutil.Process(pid)
        self.period = period
        self.samples: list[dict] = []
        self._window: list[CallRecord] = []
        self.t0 = time.monotonic()

    def on_call(self, record: CallRecord) -> None:
        self._window.append(record)

    def sample(self) -> None:
        window, self._window = self._window, []
        ok = [r.latency_s * 1e3 for r in window if r.code == "OK"]
        self.samples.append({
            "t_s": time.monotonic() - self.t0, "rss_mb": self.process.memory_info().rss / 2**20,
            "threads": self.process.num_threads(), "fds": self.process.num_fds(),
            "calls": len(window), "errors": len(window) - len(ok),
            "p50_ms": support.percentile(ok, 50), "p99_ms": support.percentile(ok, 99)})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), self.period)  # the sampling period
            except TimeoutError:
                pass
        self.sample()


def resources(samples: list[dict]) -> dict[str, dict[str, int]]:
    """Threads and open file descriptors of the server: first sample, last, highest (a leak per
    call or per connection would climb through the run)."""
    return {key: {"start": samples[0][key], "end": samples[-1][key], "max": max(s[key] for s in samples)}
            for key in ("threads", "fds")}


def rss_growth(samples: list[dict], warmup_fraction: float) -> dict[str, float]:
    total = samples[-1]["t_s"]
    after = [s for s in samples if s["t_s"] >= total * warmup_fraction]
    base = statistics.median(s["rss_mb"] for s in after[:3])
    end = statistics.median(s["rss_mb"] for s in samples[-3:])
    return {"rss_start_mb": samples[0]["rss_mb"], "rss_after_warmup_mb": base, "rss_end_mb": end,
            "rss_max_mb": max(s["rss_mb"] for s in samples), "growth_after_warmup_pct": 100 * (end - base) / base}


async def run(args: argparse.Namespace, server: support.ServerProcess, texts: list[str]) -> dict:
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        capacity = await measure_capacity(channel, args.api, server.address, args.model, texts,
                                          concurrency=args.concurrency, seconds=args.capacity_seconds)
        rate = args.rate or capacity["per_s"] * args.load
        logger.info("capacity %.0f calls/s; soaking at %.0f calls/s for %.1f min", capacity["per_s"], rate,
                    args.minutes)
        sampler = Sampler(server.pid, args.sample_seconds)
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler.run(stop))
        call = make_caller(channel, args.api, server.address, args.model, texts)
        result = await open_loop(call, rate, args.minutes * 60, on_call=sampler.on_call)
        stop.set()
        await sampling
    summary = result.summary()
    return {"capacity": capacity, "rate": rate, "summary": summary, "samples": sampler.samples,
            "memory": rss_growth(sampler.samples, args.warmup_fraction), "resources": resources(sampler.samples)}


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(t, [s["rss_mb"] for s in samples], marker=".")
    top.axvline(t[-1] * report["settings"]["warmup_fraction"], color="grey", linestyle="--", label="end of warm-up")
    top.set_ylabel("server RSS (MiB)")
    top.legend()
    bottom.plot(t, [s["p50_ms"] for s in samples], label="p50")
    bottom.plot(t, [s["p99_ms"] for s in samples], label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("minutes")
    bottom.legend()
    fig.suptitle(f"soak: {report['rate']:.0f} calls/s ({report['settings']['load']:.0%} of capacity), "
                 f"errors {report['summary']['sent'] - report['summary']['codes'].get('OK', 0)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_table(report: dict) -> str:
    s, m, cap = report["summary"], report["memory"], report["capacity"]
    errors = s["sent"] - s["codes"].get("OK", 0)
    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| capacity (closed loop, {cap['concurrency']} callers) | {cap['per_s']:.0f} calls/s |",
        f"| offered (open loop) | {report['rate']:.0f} calls/s for {report['settings']['minutes']:.1f} min |",
        f"| calls / errors | {s['sent']} / {errors} |",
        f"| latency p50 / p99 (whole run) | {s['ok_p50_ms']:.1f} / {s['ok_p99_ms']:.1f} ms |",
        f"| server RSS start / after warm-up / end / max | {m['rss_start_mb']:.1f} / {m['rss_after_warmup_mb']:.1f} / "
        f"{m['rss_end_mb']:.1f} / {m['rss_max_mb']:.1f} MiB |",
        f"| RSS growth after warm-up | {m['growth_after_warmup_pct']:+.2f} % |",
        *(f"| server {name} start / end / max | {r['start']} / {r['end']} / {r['max']} |"
          for name, r in report["resources"].items())])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model) or support.build_random_bundle(args.model)
    texts = load_texts(bundle, args.tokens)
    started, load_start = time.time(), os.getloadavg()
    server = support.start_server(bundle.repository, batching=True, threads=args.threads, extra_args=args.server_arg,
                                  env={"TOKENIZERS_PARALLELISM": "false"},
                                  log_dir=Path(tempfile.mkdtemp(prefix="bench-soak-")))
    try:
        result = asyncio.run(run(args, server, texts))
    finally:
        server.stop()
    report = {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "model": {"name": bundle.name, "version": bundle.version, "synthetic_random_weights": bundle.synthetic,
                  "architecture": bundle.card.architecture},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_command": server.command,
        **result,
    }
    support.write_json(args.output, report)
    plot(report, args.plot)
    print(format_table(report))
    print(f"\nwrote {args.output} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
