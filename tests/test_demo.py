"""`textclf demo` (the README's main job) end to end on an existing bundle: it must start the real
service in a subprocess, classify the sample texts over gRPC, show live metrics and stop it cleanly.
(Training and export of the default model are covered by their own tests; here the bundle exists.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.demo import SAMPLE_TEXTS
from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_demo_serves_and_classifies_over_grpc(tmp_path: Path) -> None:
    bundle = make_onnx_bundle(tmp_path / "models", name="tiny")
    result = subprocess.run(
        [sys.executable, "-m", "textclf_cli", "demo", "--repository", str(tmp_path / "models"), "--name", "tiny",
         "--run-dir", str(tmp_path / "runs"), "--port", "0", "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"classified {len(SAMPLE_TEXTS)} texts over gRPC" in out
    assert "model tiny version 1" in out
    assert 'textclf_requests_total{api="textclf.v1.Classify",code="OK",model="tiny",version="1"} 1.0' in out
    assert sum(out.count(f"{label} ") for label in bundle.labels) >= len(SAMPLE_TEXTS)
    assert "final request counts" in result.stderr and "stopped" in result.stderr
    assert not (tmp_path / "runs").exists(), "an existing bundle must not trigger training"
