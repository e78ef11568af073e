"""Running a benchmark script's ``--quick`` mode end to end from a test (tests/bench/): a tiny
ONNX bundle, a few small texts, the script as a subprocess, its JSON report."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the bank market rates striker team phone chip final shares rose fell goal scored software".split()


def small_texts_jsonl(tmp_path: Path) -> Path:
    rng = random.Random(0)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(60))}) + "\n"
                             for _ in range(40)), encoding="utf-8")
    return texts


def run_quick(script: str, tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``bench/<script> --quick`` on a tiny bundle and small texts; asserts it succeeded and returns
    the run and its JSON report."""
    make_onnx_bundle(tmp_path / "models", name="news", version=1, max_len=64)
    output = tmp_path / "report.json"
    run = subprocess.run([sys.executable, f"bench/{script}", "--quick", *flags, "--repository", str(tmp_path / "models"),
                          "--texts-jsonl", str(small_texts_jsonl(tmp_path)), "--tokens", "20", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, json.loads(output.read_text())
