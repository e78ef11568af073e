"""Train every cell type (rnn/gru/lstm x uni/bi) on BBC News under one budget; write a table.

    nice .venv/bin/python bench/train_cells.py [--epochs 8] [--max-minutes 3] [--max-len 256]

All runs use the default model's sizes, pooling and seed, so they share the exact same
deduplicated split (checked through the test file's sha256) and differ only in the cell and
direction. Results: bench/results/train_cells.{json,md}; run folders under runs/bench_cells/.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.data import read_manifest  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

logger = logging.getLogger("bench.train_cells")


def markdown(rows: list[dict], budget: dict) -> str:
    lines = [
        f"Budget per cell: at most {budget['epochs']} epochs (patience {budget['patience']}), "
        f"stop before exceeding {budget['max_minutes']} min of training, max_len {budget['max_len']}, "
        f"embedding {budget['embedding_dim']}, hidden {budget['hidden_size']}, {budget['pooling']} pooling, "
        f"seed {budget['seed']}; torch {budget['torch']}, {budget['threads']} threads.",
        "",
        "| cell | direction | test accuracy | test macro-F1 | best epoch | epochs run | training time (s) | parameters |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {'bi' if r['bidirectional'] else 'uni'} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} "
            f"| {r['best_epoch']} | {r['epochs_run']} | {r['train_seconds']:.0f} | {r['num_parameters']:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=3.0)
    parser.add_argument("--max-len", type=int, default=TrainConfig().max_len)
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_cells"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_cells"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    base = replace(TrainConfig(), epochs=args.epochs, max_minutes=args.max_minutes, max_len=args.max_len, progress=False)
    rows: list[dict] = []
    test_sha: set[str] = set()
    started = time.perf_counter()
    for cell in args.cells.split(","):
        for bidirectional in (False, True):
            name = f"{cell}-{'bi' if bidirectional else 'uni'}"
            config = replace(base, cell=cell, bidirectional=bidirectional, run_dir=str(Path(args.runs_dir) / name))
            logger.info("=== %s ===", name)
            report = train(config)
            test_sha.add(read_manifest(Path(config.run_dir) / "split" / "manifest.json")["files"]["test"]["sha256"])
            rows.append({
                "cell": cell, "bidirectional": bidirectional, "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"], "best_epoch": report["best_epoch"],
                "epochs_run": report["epochs_run"], "train_seconds": report["train_seconds"],
                "num_parameters": report["num_parameters"], "stop_reason": report["stop_reason"],
                "test_examples": report["num_examples"], "test_truncated": report["test_truncated"],
            })
    if len(test_sha) != 1:
        raise RuntimeError(f"runs did not share one test split: {test_sha}")
    budget = {**{k: v for k, v in asdict(base).items() if k in
                 ("epochs", "patience", "max_minutes", "max_len", "embedding_dim", "hidden_size", "pooling", "seed")},
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    result = {"budget": budget, "results": rows, "test_split_sha256": test_sha.pop(),
              "machine": {"platform": platform.platform(), "processor": platform.processor()},
              "total_seconds": time.perf_counter() - started}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(rows, budget)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
