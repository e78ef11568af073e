"""Tokenizing one text: the fast path against a call into ``tokenizers`` (docs/service.md
"Bounded work per text"), in-process, on the serving benchmark's texts.

    .venv/bin/python bench/bench_tokenize.py --repository models
    .venv/bin/python bench/bench_tokenize.py --repository /tmp/models --texts-jsonl texts.jsonl --calls 200

Per length (short = 40 tokens, long = 300 tokens, 64 texts each, as bench/bench_serving.py builds
them): how many texts the fast path takes, then, alternating, ``--calls`` single-text calls of
``TextEncoder.token_ids`` (what the server's event loop calls) and of ``tokenizers``'
``encode_batch_fast`` (what it called before), and of ``TextEncoder.encode`` (the bounded encoding
around them: the rounds of docs/service.md "Bounded work per text"); medians in µs. The first two
must give the same ids for every text (exit 1 otherwise), and so must they for three prefixes (a
seventh, half, the first 4,000 characters) of every text of the source (``corpus_check``). Then the hostile shapes: ``encode`` of one
text of ``INLINE_TOKENIZE_CHARS`` characters (the largest request the server tokenizes on its event
loop) and of 64 texts of 3,072 and of 65,536 characters, of U+FDFA (NFKC: 18 characters, 4 words),
dots, "…", ``"a "`` and no space at all; the fastest of a few repetitions, in ms. Writes bench/results/tokenize.json. Beyond ASCII:
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
from bundle import tokenization  # noqa: E402
from bundle.tokenization import TextEncoder  # noqa: E402
from service.batching import INLINE_TOKENIZE_CHARS  # noqa: E402

# what a hostile text repeats (bench/bench_hostile.py's kinds, and "…", which NFKC makes three tokens)
HOSTILE_UNITS = {"nfkc-18x": "\ufdfa", "dots": ".", "ellipsis": "\u2026", "a-space": "a ", "no-space": "x"}
HOSTILE_SHAPES = ((1, INLINE_TOKENIZE_CHARS), (64, 3072), (64, 65536))  # (texts, characters each)

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


def _corpus_check(encoder: TextEncoder, source: list[str]) -> dict:
    """Every source text, three prefixes each: how many take the fast path, and how many get other ids
    from ``token_ids`` than from ``tokenizers``."""
    prefixes = [text[:cut] for text in source for cut in (len(text) // 7, len(text) // 2, 4000)]
    library = [e.ids for e in encoder.tokenizer.encode_batch_fast(prefixes, add_special_tokens=False)]
    return {"texts": len(source), "prefixes": len(prefixes),
            "fast_path": sum(encoder.fast_path_tokens(p) is not None for p in prefixes),
            "differing_ids": sum(encoder.token_ids([p]) != [ids] for p, ids in zip(prefixes, library))}


def _hostile_cells(encoder: TextEncoder) -> list[dict]:
    cells = []
    for name, unit in HOSTILE_UNITS.items():
        for count, chars in HOSTILE_SHAPES:
            texts = [(unit * (chars // len(unit) + 1))[:chars]] * count
            encoder.encode(texts)  # warm
            rounds = 20 if count == 1 else 3
            best = min(_seconds(encoder.encode, texts) for _ in range(rounds))
            cells.append({"unit": name, "texts": count, "chars": chars, "encode_ms": best * 1e3})
            logger.info("hostile %s: %d text(s) of %d characters, encode %.2f ms", name, count, chars, best * 1e3)
    return cells


def _seconds(call, argument) -> float:
    start = time.perf_counter()
    call(argument)
    return time.perf_counter() - start


def _fast_path_info(encoder: TextEncoder) -> dict:
    """How many characters beyond ASCII the fast path takes and replaces, and what finding them cost
    (a first encoder of this pipeline in the process; absent on trees before fast_path_characters)."""
    find = getattr(tokenization, "fast_path_characters", None)
    if find is None:
        return {}
    getattr(tokenization, "_CHARACTERS_BY_PIPELINE", {}).clear()
    start = time.perf_counter()
    characters = find(encoder.tokenizer)
    return {"taken": len(characters.taken), "replaced": len(getattr(characters, "replaced", {})),
            "build_ms": (time.perf_counter() - start) * 1e3}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    bundle = support.find_bundle(args.repository, args.model)
    if bundle is None:
        logger.error("no bundle %s/%s/<version>", args.repository, args.model)
        return 2
    encoder = TextEncoder.from_file(bundle.path / "tokenizer.json", int(bundle.card.max_len))
    texts, _ = bench_serving.prepare_texts(bundle, args)
    corpus = _corpus_check(encoder, support.jsonl_texts(args.texts_jsonl) if args.texts_jsonl
                           else support.bbc_corpus_texts())
    logger.info("corpus: %d of %d prefixes on the fast path, %d with other ids", corpus["fast_path"],
                corpus["prefixes"], corpus["differing_ids"])
    fast = lambda text: encoder.token_ids([text])  # noqa: E731
    library = lambda text: [e.ids for e in encoder.tokenizer.encode_batch_fast([text], add_special_tokens=False)]  # noqa: E731
    bounded = lambda text: encoder.encode([text])  # noqa: E731
    cells, same = [], True
    for length, pool in texts.items():
        differ = sum(fast(text) != library(text) for text in pool)
        same = same and differ == 0
        taken = sum(encoder.fast_path_tokens(text) is not None for text in pool)
        ways = {"fast_path_us": fast, "tokenizers_us": library, "encode_us": bounded}
        for _ in range(3):  # warm every way
            for call in ways.values():
                _median_us(call, pool, len(pool))
        times: dict[str, list[float]] = {key: [] for key in ways}
        for _ in range(5):  # alternating rounds: the machine's noise falls on every way
            for key, call in ways.items():
                times[key].append(_median_us(call, pool, args.calls // 5))
        cell = {"length": length, "texts": len(pool), "fast_path_texts": taken, "differing_ids": differ,
                **{key: statistics.median(values) for key, values in times.items()}}
        cells.append(cell)
        logger.info("%s: %d of %d texts on the fast path, %.1f µs against %.1f µs for tokenizers (ids differ: %d); "
                    "encode %.1f µs", length, taken, len(pool), cell["fast_path_us"], cell["tokenizers_us"], differ,
                    cell["encode_us"])
    report = {"benchmark": "bench/bench_tokenize.py", "command": " ".join(["bench/bench_tokenize.py", *(argv or sys.argv[1:])]),
              "machine": bench_serving.machine_info(), "bundle": str(bundle.path), "calls": args.calls,
              "fast_path_characters": _fast_path_info(encoder), "corpus_check": corpus, "cells": cells,
              "hostile": _hostile_cells(encoder)}
    support.write_json(args.output, report)
    print(json.dumps(cells, indent=1))
    return 0 if same and corpus["differing_ids"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
