"""onnxruntime alone, per batch size and text length: what one ``session.run`` costs for the
bundle's model (the service's runtime, 1 intra-op thread, spinning off), per batch and per token.
Backs the choice of ``max_batch_tokens`` (docs/service.md "Batching design"): how long one capped
batch computes, and whether small batches cost more per token.

    .venv/bin/python bench/ort_batch_sweep.py --repository models
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving_support as support  # noqa: E402
from service.runtime import CPU, ModelRuntime  # noqa: E402

logger = logging.getLogger("ort_batch_sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--lengths", type=int, nargs="+", default=[40, 300, 384])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 21, 32, 64])
    p.add_argument("--min-seconds", type=float, default=0.5, help="timed window per cell")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "ort_batch_sweep.json")
    return p.parse_args(argv)


def time_run(runtime: ModelRuntime, rows: list[np.ndarray], min_seconds: float) -> float:
    """Median seconds of one ``runtime.run`` (pad, session.run, softmax) over a timed window."""
    runtime.run(rows)
    times: list[float] = []
    end = time.perf_counter() + min_seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        runtime.run(rows)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model)
    if bundle is None:
        raise SystemExit(f"no bundle of {args.model} in {args.repository}")
    runtime = ModelRuntime.load(bundle.path, bundle.card, providers=[CPU], intra_op_threads=1, inter_op_threads=1,
                                spinning=False)
    rng = np.random.default_rng(0)
    cells = []
    for length in args.lengths:
        for size in args.batch_sizes:
            rows = [rng.integers(2, runtime.encoder.vocab_size, length).astype(np.int64) for _ in range(size)]
            seconds = time_run(runtime, rows, args.min_seconds)
            cells.append({"length": length, "batch": size, "padded_tokens": length * size, "ms": seconds * 1e3,
                          "us_per_token": seconds / (length * size) * 1e6})
            logger.info("length %3d batch %2d: %7.2f ms  %.2f us/token", length, size, seconds * 1e3,
                        cells[-1]["us_per_token"])
    report = {"command": " ".join(["python", "bench/ort_batch_sweep.py", *(argv or sys.argv[1:])]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
              "model": {"name": args.model, "version": bundle.version, "architecture": bundle.card.architecture,
                        "max_len": bundle.card.max_len},
              "cells": cells}
    support.write_json(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
