"""The serving benchmark still runs end to end (bench/bench_serving.py --quick on a tiny bundle).

Real processes: the server, the gRPC floor server and the load generators; a short run, so the
numbers themselves are not checked, only that every cell completed without errors and that the
report carries the ratios, goals and floor bounds docs/benchmarks.md relies on.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench_texts import write_texts_jsonl
from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_run_reports_cells_ratios_and_floor(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1, max_len=512)
    texts = write_texts_jsonl(tmp_path / "texts.jsonl", count=20, words_per_text=400)
    output = tmp_path / "serving.json"
    run = subprocess.run(
        [sys.executable, "bench/bench_serving.py", "--quick", "--repository", str(tmp_path / "models"),
         "--texts-jsonl", str(texts), "--modes", "textclf", "textclf-multi", "textclf-stream", "grpc-floor",
         "--multi-texts", "4", "--output", str(output), "--no-plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.read_text())
    cells = {(c["mode"], c["length"], c["concurrency"]): c for c in result["cells"]}
    modes = ("textclf", "textclf-multi", "textclf-stream", "grpc-floor")
    assert set(cells) == {(mode, length, c) for mode in modes for length in ("short", "long") for c in (1, 8)}
    for key, cell in cells.items():
        assert cell["requests"] > 0 and cell["errors"] == {}, key
    assert cells[("textclf", "short", 8)]["mean_batch"] >= 1.0  # the server's own metrics were scraped
    multi = cells[("textclf-multi", "short", 1)]
    assert multi["texts_per_request"] == 4 and multi["texts_per_s"] == pytest.approx(4 * multi["throughput_rps"])
    assert multi["mean_batch"] >= 4.0  # each request's 4 texts computed together
    for length in ("short", "long"):
        ratios = result["ratios"][length]
        assert set(ratios["goals"]) == {"c8_served_ge_0.8x_ceiling", "c8_batching_ge_3x_off", "c1_p50_within_1ms"}
        assert ratios["floor_c8_rps"] > 0 and ratios["floor_p50_c1_ms"] > 0
        assert set(ratios["reachable_here"]) == {"c8_served_ge_0.8x_ceiling", "c1_p50_within_1ms"}
        assert result["ceiling"][length]["ceiling_per_s"] > 0
        assert ratios["multi_texts_over_ceiling"] > 0 and ratios["stream_texts_over_ceiling"] > 0
    assert "goals:" in run.stdout and "reachable on this machine" in run.stdout
