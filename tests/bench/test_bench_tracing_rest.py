"""The serving benchmark's tracing and REST modes still run end to end (bench/bench_serving.py
--quick --modes textclf-traced kserve-rest on a tiny bundle): every cell completed without errors,
the traced server exported spans to the loopback collector, the REST cells were served."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_of_tracing_and_rest_modes(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1)
    output = tmp_path / "serving.json"
    run = subprocess.run(
        [sys.executable, "bench/bench_serving.py", "--quick", "--repository", str(tmp_path / "models"),
         "--modes", "textclf-traced", "kserve-rest", "--concurrency", "2", "--skip-ceiling", "--output", str(output),
         "--no-plot"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = {(c["mode"], c["length"]): c for c in json.loads(output.read_text())["cells"]}
    assert set(cells) == {(mode, length) for mode in ("textclf-traced", "kserve-rest") for length in ("short", "long")}
    for key, cell in cells.items():
        assert cell["requests"] > 0 and cell["errors"] == {}, key
    traced = cells[("textclf-traced", "short")]
    # every request sampled: at least its own span and the three stage spans reached the collector
    assert traced["spans_exported_total"] >= 4 * sum(c["requests"] for k, c in cells.items() if k[0] == "textclf-traced")
