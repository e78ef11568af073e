#!/usr/bin/env python3
"""Reproduce a bundle's golden.json with nothing but tokenizers, onnxruntime, numpy and json.

    python scripts/check_golden.py models/news/1

This is the reference client of docs/CONTRACTS.md ("Using model.onnx from any onnxruntime"):
it imports no textclf module, on purpose, so it proves the bundle is usable on its own.
Exit 0 when every golden text gives the recorded ids, lengths, logits (within the file's
``atol_logits``) and label, and (fp32 models) also when all texts are scored together in one
padded batch; exit 1 otherwise. ``--print-modules`` lists the top-level modules imported (for the test).
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def encode(tokenizer, texts, max_len, unk_id, pad_id=0):
    """The contract: no special tokens, first max_len ids, empty -> [UNK], right-pad with 0."""
    rows = [enc.ids[:max_len] or [unk_id] for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    input_ids = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
    return input_ids, lengths


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv):
    bundle = argv[0].rstrip("/")
    card = json.load(open(f"{bundle}/model.json", encoding="utf-8"))
    golden = json.load(open(f"{bundle}/golden.json", encoding="utf-8"))
    labels, max_len = card["labels"], int(card["max_len"])
    tokenizer = Tokenizer.from_file(f"{bundle}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    unk_id = tokenizer.token_to_id("[UNK]")
    session = ort.InferenceSession(f"{bundle}/model.onnx", providers=["CPUExecutionProvider"])
    texts = [case["text"] for case in golden["cases"]]
    atol = float(golden["atol_logits"])
    problems = []
    if labels != golden["labels"] or max_len != golden["max_len"] or unk_id != golden["unk_id"]:
        problems.append("model.json / tokenizer.json disagree with golden.json on labels, max_len or [UNK]")
    worst = 0.0
    for case in golden["cases"]:
        ids, lengths = encode(tokenizer, [case["text"]], max_len, unk_id)
        if ids[0].tolist() != case["input_ids"] or int(lengths[0]) != case["length"]:
            problems.append(f"ids differ for {case['text'][:40]!r}")
            continue
        logits = session.run(["logits"], {"input_ids": ids, "lengths": lengths})[0]
        worst = max(worst, float(np.abs(logits[0] - np.array(case["logits"])).max()))
        if labels[int(softmax(logits)[0].argmax())] != case["label"]:
            problems.append(f"label differs for {case['text'][:40]!r}")
    if worst > atol:
        problems.append(f"max |logit - golden| {worst:.3g} > {atol:g}")
    ids, lengths = encode(tokenizer, texts, max_len, unk_id)  # all texts in one padded batch
    batched = session.run(["logits"], {"input_ids": ids, "lengths": lengths})[0]
    batch_worst = float(np.abs(batched - np.array([c["logits"] for c in golden["cases"]])).max())
    # dynamic INT8 scales activations per batch: only fp32 answers are batch-invariant
    if batch_worst > atol and golden["quantization"] == "none":
        problems.append(f"batched: max |logit - golden| {batch_worst:.3g} > {atol:g}")
    print(json.dumps({"texts": len(texts), "max_abs_diff": worst, "batched_max_abs_diff": batch_worst,
                      "atol": atol, "problems": problems}))
    if "--print-modules" in argv:
        print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
