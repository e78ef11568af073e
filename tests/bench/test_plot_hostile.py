"""bench/plot_hostile.py reads bench_hostile.py reports (every arm they have) and writes a PNG."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _arm(before: float, under: float) -> dict:
    return {"no_attack": {"p99_ms": before}, "attack": {"p99_ms": under}}


def test_plot_reads_every_arm_and_writes_a_png(tmp_path: Path) -> None:
    report = {**_arm(4.0, 48.0), "attack_on_second_service": _arm(3.0, 15.0),
              "attack_on_second_service_nice19": _arm(3.0, 12.0), "attack_on_second_service_sched_idle": _arm(2.0, 10.0)}
    (tmp_path / "run-1.json").write_text(json.dumps(report))
    output = tmp_path / "hostile.png"
    run = subprocess.run([sys.executable, "bench/plot_hostile.py", str(tmp_path / "run-1.json"), "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "run-1: same process (as deployed): 4.0 -> 48.0 ms (12.0x)" in run.stdout
    assert "run-1: 2nd process, SCHED_IDLE: 2.0 -> 10.0 ms (5.0x)" in run.stdout
    assert "floor" not in run.stdout  # arms the report does not have are not invented
