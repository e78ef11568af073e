"""The polling-cost benchmark still runs end to end (bench/idle_spin_cost.py --quick on a tiny
bundle, real server processes) and measures what it says: the server with the default window polls
between sparse calls, the one with ``--idle-spin-us 0`` never does."""
from __future__ import annotations

from pathlib import Path

from tests.support.quick_bench import run_quick


def test_quick_idle_spin_cost_measures_both_variants(tmp_path: Path) -> None:
    run, report = run_quick("idle_spin_cost.py", tmp_path)
    cells = {cell["spin_us"]: cell for cell in report["cells"]}
    assert set(cells) == {2000, 0}
    for cell in cells.values():
        assert cell["codes"] == {"OK": cell["requests"]} and cell["requests"] > 0
        assert cell["server_cpu_cores"] > 0
    assert cells[0]["spin_cores"] == 0
    assert cells[2000]["spin_cores"] > 0  # 50 calls/s, each followed by up to 2 ms of polling
    assert "| rate (req/s) | idle_spin_us |" in run.stdout
