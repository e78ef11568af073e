"""ONNX Runtime fp32 and INT8 vs PyTorch eager, side by side, same thread count: sequences/s (medians).

    .venv/bin/python bench/bench_onnx_vs_torch.py [--checkpoint runs/news/best.pt] [--threads 2]

Uses the checkpoint when it exists, else a randomly initialised model of the default training
configuration (training.train.TrainConfig; the output says which). Also reports what INT8
quantised, the file sizes and the INT8 goals (>= 1.5x fp32 at batch 64, >= 3x smaller).
Writes bench/results/onnx_vs_torch-<N>thread(s).json.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.cli import library_versions  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.optimize import optimize_onnx, quantize_int8, quantized_parts  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.model import ModelConfig, RecurrentClassifier  # noqa: E402

logger = logging.getLogger("bench")
BATCHES, LENGTHS = (1, 8, 64), (64, 256)


def load_model(checkpoint: Path) -> tuple[RecurrentClassifier, str]:
    if checkpoint.is_file():
        return load_checkpoint(checkpoint).model, f"checkpoint {checkpoint}"
    from training.train import TrainConfig

    torch.manual_seed(0)
    d = TrainConfig()
    config = ModelConfig(vocab_size=d.vocab_size, num_labels=5, cell=d.cell, embedding_dim=d.embedding_dim,  # type: ignore[arg-type]
                         hidden_size=d.hidden_size, num_layers=d.num_layers, bidirectional=d.bidirectional,
                         pooling=d.pooling)  # type: ignore[arg-type]
    return RecurrentClassifier(config).eval(), "randomly initialised default-configuration model (no checkpoint found)"


def inputs(vocab: int, batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-length sequences: every text has exactly ``length`` tokens."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, vocab, (batch, length)).astype(np.int64), np.full(batch, length, dtype=np.int64)


def measure(fns: dict, batch: int, min_time: float, repeats: int) -> dict[str, float]:
    """Median sequences/s per engine; engines are interleaved window by window so that load from
    other processes on the shared cores hits every engine alike."""
    for fn in fns.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            calls, start = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
            rates[name].append(calls * batch / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/news/best.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timed window")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/onnx_vs_torch-<N>thread(s).json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "export", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    model, source = load_model(args.checkpoint)
    logger.info("model: %s (%s)", source, model.config.to_dict())
    vocab = model.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx")
        fp32 = optimize_onnx(raw, Path(tmp) / "fp32.onnx")
        quantize_int8(fp32, Path(tmp) / "int8.onnx")
        parts = quantized_parts(fp32, Path(tmp) / "int8.onnx")
        logger.info("int8: integer %s, float %s, %d -> %d bytes (%.2fx smaller)", parts["integer"], parts["float"],
                    parts["fp32_bytes"], parts["int8_bytes"], parts["size_ratio"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        sessions = {
            kind: ort.InferenceSession(str(Path(tmp) / f"{kind}.onnx"), options, providers=["CPUExecutionProvider"])
            for kind in ("fp32", "int8")
        }
        invariance = int8_batch_invariance(args.checkpoint, sessions["int8"]) if args.checkpoint.is_file() else None
        rows = []
        for length in LENGTHS:
            for batch in BATCHES:
                ids, lens = inputs(vocab, batch, length, seed=batch * 1000 + length)
                t_ids, t_lens = torch.from_numpy(ids), torch.from_numpy(lens)

                def run_torch() -> None:
                    with torch.inference_mode():
                        model(t_ids, t_lens)

                feeds = {"input_ids": ids, "lengths": lens}
                fns = {"torch_eager": run_torch}
                fns.update({f"ort_{kind}": (lambda s=session: s.run(None, feeds)) for kind, session in sessions.items()})
                row = {"batch": batch, "length": length, **measure(fns, batch, args.min_time, args.repeats)}
                row["ratio_fp32"] = row["ort_fp32"] / row["torch_eager"]
                row["ratio_int8"] = row["ort_int8"] / row["torch_eager"]
                row["int8_vs_fp32"] = row["ort_int8"] / row["ort_fp32"]
                rows.append(row)
                logger.info("b%-3d len%-4d torch %8.1f  ort-fp32 %8.1f (%.2fx)  ort-int8 %8.1f (%.2fx; %.2fx fp32)",
                            batch, length, row["torch_eager"], row["ort_fp32"], row["ratio_fp32"], row["ort_int8"],
                            row["ratio_int8"], row["int8_vs_fp32"])
    table = format_table(rows, args.threads, parts)
    print(table)
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": source,
        "config": model.config.to_dict(),
        "threads": args.threads,
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "unit": "sequences/s (median)",
        "versions": library_versions(),
        "rows": rows,
        "goal_b1_fp32_ratio_ge_1_5": all(r["ratio_fp32"] >= 1.5 for r in rows if r["batch"] == 1),
        "int8": parts,
        "int8_batch_invariance_val": invariance,
        "goal_int8_b64_ge_1_5x_fp32": all(r["int8_vs_fp32"] >= 1.5 for r in rows if r["batch"] == 64),
        "goal_int8_ge_3x_smaller": parts["size_ratio"] >= 3.0,
    }
    out = args.out or default_output(args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def int8_batch_invariance(checkpoint_path: Path, session: ort.InferenceSession) -> dict:
    """Max |delta probability| of each validation text alone vs inside seeded batches of 64 and
    next to the longest text (the validation split: this is not a test-split reader)."""
    from export.parity import softmax
    from training.data import load_split

    checkpoint = load_checkpoint(checkpoint_path)
    texts = load_split(checkpoint.manifest_path, "val")[0]

    def probs(batch_texts: list[str]) -> np.ndarray:
        batch = checkpoint.encoder.encode_batch(batch_texts)
        return softmax(session.run(None, {"input_ids": batch.input_ids, "lengths": batch.lengths})[0])

    alone = np.concatenate([probs([text]) for text in texts])
    longest = max(texts, key=len)
    worst_pair = max(float(np.abs(probs([text, longest])[0] - alone[i]).max()) for i, text in enumerate(texts))
    order = np.random.default_rng(0).permutation(len(texts))
    worst_batch = max(float(np.abs(probs([texts[r] for r in rows]) - alone[rows]).max())
                      for rows in (order[i : i + 64] for i in range(0, len(order), 64)))
    result = {"texts": len(texts), "max_abs_prob_batches_of_64": worst_batch,
              "max_abs_prob_next_to_longest": worst_pair}
    logger.info("int8 batch invariance on %d validation texts: %s", len(texts), result)
    return result


def default_output(threads: int) -> Path:
    """The stable names docs/export.md links to: onnx_vs_torch-1thread.json, -2threads.json, ..."""
    return ROOT / "bench" / "results" / f"onnx_vs_torch-{threads}thread{'' if threads == 1 else 's'}.json"


def format_table(rows: list[dict], threads: int, parts: dict) -> str:
    lines = [f"sequences/s, median, {threads} threads; INT8 = integer {', '.join(parts['integer'])}"
             f"{'; float ' + ', '.join(parts['float']) if parts['float'] else ''}; model.onnx "
             f"{parts['fp32_bytes'] / 1e6:.1f} MB fp32 -> {parts['int8_bytes'] / 1e6:.1f} MB int8 ({parts['size_ratio']:.2f}x smaller)",
             "| batch | len | PyTorch eager | ORT fp32 | ratio | ORT int8 | ratio | int8 / fp32 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['length']} | {r['torch_eager']:.0f} | {r['ort_fp32']:.0f} | "
                     f"{r['ratio_fp32']:.2f}x | {r['ort_int8']:.0f} | {r['ratio_int8']:.2f}x | {r['int8_vs_fp32']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
