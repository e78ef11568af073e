"""Texts for the benchmark smoke tests: a JSONL file (``{"text": ...}`` per line) of random words."""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "the bank market rates striker team phone chip final shares rose fell goal scored software".split()


def write_texts_jsonl(path: Path, *, count: int, words_per_text: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words_per_text))}) + "\n"
                            for _ in range(count)), encoding="utf-8")
    return path
