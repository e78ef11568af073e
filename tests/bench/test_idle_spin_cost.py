"""The polling-cost benchmark still runs end to end (bench/idle_spin_cost.py --quick on a tiny
bundle, real server processes) and measures what it says: the server with the default window polls
between sparse calls, the one with ``--idle-spin-us 0`` never does."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.test_bench_hostile import _texts
from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_quick_idle_spin_cost_measures_both_variants(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1, max_len=64)
    output = tmp_path / "idle_spin_cost.json"
    run = subprocess.run([sys.executable, "bench/idle_spin_cost.py", "--quick", "--repository", str(tmp_path / "models"),
                          "--texts-jsonl", str(_texts(tmp_path)), "--tokens", "20", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cells = {cell["spin_us"]: cell for cell in json.loads(output.read_text())["cells"]}
    assert set(cells) == {2000, 0}
    for cell in cells.values():
        assert cell["codes"] == {"OK": cell["requests"]} and cell["requests"] > 0
        assert cell["server_cpu_cores"] > 0
    assert cells[0]["spin_cores"] == 0
    assert cells[2000]["spin_cores"] > 0  # 50 calls/s, each followed by up to 2 ms of polling
    assert "| rate (req/s) | idle_spin_us |" in run.stdout
