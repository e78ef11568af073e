"""Tokenizing one text: the fast path against a call into ``tokenizers`` (docs/service.md
"Bounded work per text"), in-process, on the serving benchmark's texts.

    .venv/bin/python bench/bench_tokenize.py --repository models
    .venv/bin/python bench/bench_tokenize.py --repository /tmp/models --texts-jsonl texts.jsonl --calls 200

Per length (short = 40 tokens, long = 300 tokens, 64 texts each, as bench/bench_serving.py builds
them): how many texts the fast path takes, then, alternating, ``--calls`` single-text calls of
``TextEncoder.token_ids`` (what the server's event loop calls) and of ``tokenizers``'
``encode_batch_fast`` (what it called before); medians in µs. The two must give the same ids for
every text (exit 1 otherwise). Writes bench/results/tokenize.json. Beyond ASCII:
``--texts-jsonl bench/data/multilingual.jsonl`` (news-like texts in seven languages with
typographic quotes, dashes and euro amounts; bench/data/make_multilingual.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving  # noqa: E402
import serving_support as support  # noqa: E402
from bundle.tokenization import TextEncoder  # noqa: E402

logger = logging.getLogger("bench_tokenize")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="news")
    p.add_argument("--texts-jsonl", type=Path, help="JSONL with a 'text' field (default: the BBC News corpus)")
    p.add_argument("--num-texts", type=int, default=64)
    p.add_argument("--short-tokens", type=int, default=40)
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--calls", type=int, default=3000, help="single-text calls per way and length")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "tokenize.json")
    return p.parse_args(argv)


def _median_us(call, texts: list[str], calls: int) -> float:
    times = []
    for i in range(calls):
        text = texts[i % len(texts)]
        start = time.perf_counter()
        call(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model)
    if bundle is None:
        logger.error("no bundle %s/%s/<version>", args.repository, args.model)
        return 2
    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    texts, _ = bench_serving.prepare_texts(bundle, args)
    fast = lambda text: encoder.token_ids([text])  # noqa: E731
    library = lambda text: [e.ids for e in encoder.tokenizer.encode_batch_fast([text], add_special_tokens=False)]  # noqa: E731
    cells, same = [], True
    for length, pool in texts.items():
        differ = sum(fast(text) != library(text) for text in pool)
        same = same and differ == 0
        taken = sum(encoder.fast_path_tokens(text) is not None for text in pool)
        for _ in range(3):  # warm both
            _median_us(fast, pool, len(pool))
            _median_us(library, pool, len(pool))
        fast_us, library_us = [], []
        for _ in range(5):  # alternating rounds: the machine's noise falls on both
            fast_us.append(_median_us(fast, pool, args.calls // 5))
            library_us.append(_median_us(library, pool, args.calls // 5))
        cell = {"length": length, "texts": len(pool), "fast_path_texts": taken, "differing_ids": differ,
                "fast_path_us": statistics.median(fast_us), "tokenizers_us": statistics.median(library_us)}
        cells.append(cell)
        logger.info("%s: %d of %d texts on the fast path, %.1f µs against %.1f µs for tokenizers (ids differ: %d)",
                    length, taken, len(pool), cell["fast_path_us"], cell["tokenizers_us"], differ)
    report = {"benchmark": "bench/bench_tokenize.py", "command": " ".join(["bench/bench_tokenize.py", *(argv or sys.argv[1:])]),
              "machine": bench_serving.machine_info(), "bundle": str(bundle.path), "calls": args.calls, "cells": cells}
    support.write_json(args.output, report)
    print(json.dumps(cells, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
