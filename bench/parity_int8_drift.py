"""How far dynamic INT8 moves a trained model's probabilities: the evidence behind parity's INT8 bounds.

    .venv/bin/python bench/parity_int8_drift.py --checkpoint runs/news/best.pt [--gather]

Exports the checkpoint (fp32, basic optimisation), quantises it with ``export.optimize.quantize_int8``
(``--gather`` adds the embedding lookup to the quantised op types), and prints, for the saved
test split and the parity edge cases, scored alone and in batches of 64: max and p99 |Δprob|
against the PyTorch model, argmax agreement, and max |Δlogit| between alone and batched.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.onnx_export import export_onnx  # noqa: E402
from export.optimize import optimize_onnx, quantize_int8  # noqa: E402
from export.parity import edge_case_texts, load_test_split, onnx_logits, softmax, torch_logits  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/news/best.pt"))
    parser.add_argument("--gather", action="store_true", help="quantise the embedding (Gather) too")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    split = load_test_split(checkpoint.manifest_path)
    if split is None:
        raise SystemExit("the checkpoint records no test split")
    texts = split[0] + list(edge_case_texts(checkpoint.encoder).values())
    num_test = len(split[0])
    reference = torch_logits(checkpoint, texts)
    op_types = ("LSTM", "MatMul", "Gemm") + (("Gather",) if args.gather else ())
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(checkpoint.model, Path(tmp) / "raw.onnx")
        fp32 = optimize_onnx(raw, Path(tmp) / "fp32.onnx")
        histogram = quantize_int8(fp32, Path(tmp) / "int8.onnx", op_types=op_types)
        session = ort.InferenceSession(str(Path(tmp) / "int8.onnx"), providers=["CPUExecutionProvider"])
        alone = np.concatenate([onnx_logits(session, checkpoint.encoder, [t]) for t in texts])
        batched = np.concatenate([onnx_logits(session, checkpoint.encoder, texts[i : i + 64])
                                  for i in range(0, len(texts), 64)])
    print(f"{args.checkpoint}: {checkpoint.config.cell} bi={checkpoint.config.bidirectional}, "
          f"{num_test} test texts + {len(texts) - num_test} edge cases, int8 ops {histogram}")
    print(f"{'scored':<10} {'test max|Δp|':>12} {'test p99':>9} {'test argmax':>11} {'edge max|Δp|':>12} {'edge argmax':>11}")
    for name, logits in (("alone", alone), ("batch 64", batched)):
        drift = np.abs(softmax(logits) - softmax(reference)).max(axis=1)
        agree = logits.argmax(1) == reference.argmax(1)
        print(f"{name:<10} {drift[:num_test].max():>12.4f} {np.quantile(drift[:num_test], 0.99):>9.4f} "
              f"{agree[:num_test].mean():>11.4f} {drift[num_test:].max():>12.4f} {agree[num_test:].mean():>11.4f}")
    print(f"batch invariance (alone vs batch 64) max |Δlogit|: {np.abs(alone - batched).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
