"""The request-path benchmark still runs end to end (bench/bench_request_path.py on a tiny bundle).

Real processes: the server and the gRPC floor server; a few calls per cell, so the numbers are not
checked, only that every cell was measured and carries what docs/benchmarks.md reads from it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.bench_texts import write_texts_jsonl
from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_request_path_benchmark_reports_cpu_per_call_for_every_cell(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1)
    texts = write_texts_jsonl(tmp_path / "texts.jsonl", count=20, words_per_text=60)
    output = tmp_path / "request_path.json"
    run = subprocess.run(
        [sys.executable, "bench/bench_request_path.py", "--repository", str(tmp_path / "models"),
         "--texts-jsonl", str(texts), "--floor", "--apis", "textclf", "kserve", "--concurrency", "1", "4",
         "--calls", "40", "--warmup-calls", "3", "--reps", "2", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.read_text())
    cells = {(s["variant"], s["api"], s["concurrency"]): s for s in result["summary"]}
    assert set(cells) == {("this", api, c) for api in ("textclf", "kserve") for c in (1, 4)} | {
        ("floor", "textclf", c) for c in (1, 4)}
    for key, cell in cells.items():
        # CPU times come in clock ticks (10 ms): over 40 calls only their presence is checked
        assert cell["reps"] == 2 and cell["p50_ms"] > 0 and cell["wall_rps"] > 0, key
        assert cell["server_cpu_ms_per_call"] >= 0 and cell["loop_cpu_ms_per_call"] >= 0, key
    assert cells[("this", "textclf", 1)]["mean_batch"] == 1.0  # the server's own metrics were scraped
    assert cells[("floor", "textclf", 1)]["mean_batch"] is None
    assert "cpu ms/call" in run.stdout
