"""The onnxruntime batch sweep still runs end to end (bench/ort_batch_sweep.py on a tiny bundle)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_reports_every_cell(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1, max_len=64)
    output = tmp_path / "sweep.json"
    run = subprocess.run([sys.executable, "bench/ort_batch_sweep.py", "--repository", str(tmp_path / "models"),
                          "--lengths", "8", "64", "--batch-sizes", "1", "4", "--min-seconds", "0.01",
                          "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = json.loads(output.read_text())["cells"]
    assert [(c["length"], c["batch"]) for c in cells] == [(8, 1), (8, 4), (64, 1), (64, 4)]
    for cell in cells:
        assert cell["ms"] > 0 and cell["padded_tokens"] == cell["length"] * cell["batch"]
        assert abs(cell["us_per_token"] - cell["ms"] * 1e3 / cell["padded_tokens"]) < 1e-6
