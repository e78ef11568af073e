"""The peer benchmark (bench/peers/bench_peers.py) runs end to end and checks label agreement.

CI never installs the peer servers' venvs (hundreds of MB each): the end-to-end test runs the
harness with textclf alone (first and last in a cell, real server processes, the real
tritonclient load generator, the real agreement check); the peers' own run is skipped unless
their venvs exist (``bench/peers/venvs.py``). The agreement logic is also checked on answers that
disagree, so it can fail.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "peers"))

import agreement  # noqa: E402
import peers_report  # noqa: E402
import venvs  # noqa: E402

WORDS = "the bank market rates striker team phone chip final shares rose fell goal scored software".split()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("peers")
    make_onnx_bundle(root / "models", name="news", version=1, max_len=512)
    rng = random.Random(0)
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(400))}) + "\n"
                             for _ in range(20)), encoding="utf-8")
    return root / "models", texts


def run_bench(repository: tuple[Path, Path], output: Path,
              servers: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    models, texts = repository
    run = subprocess.run(
        [sys.executable, "bench/peers/bench_peers.py", "--quick", "--model-repository", str(models),
         "--texts-jsonl", str(texts), "--servers", *servers, "--lengths", "short", "long", "--concurrency", "4",
         "--seconds", "1", "--no-install", "--output", str(output), "--no-plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(output.read_text())


def test_textclf_alone_runs_first_and_last_in_every_cell_and_agrees_with_itself(repository, tmp_path: Path) -> None:
    run, result = run_bench(repository, tmp_path / "peers.json", ["textclf"])
    assert result["order"] == ["textclf", "textclf"]
    cells = {(r["length"], r["concurrency"], r["position"]): r for r in result["runs"]}
    assert set(cells) == {(length, 4, p) for length in ("short", "long") for p in (0, 1)}
    for key, r in cells.items():
        assert "failed" not in r and r["requests"] > 0 and r["errors"] == {} and r["orphans"] == 0, key
        assert r["agreement"]["same_labels"] == r["agreement"]["texts"] > 0, key
        assert r["server_cpu_pct"] is not None and r["start_s"] > 0
    assert result["agreement"]["textclf"]["agrees"] and result["problems"] == []
    assert [c["length"] for c in result["summary"]] == ["short", "long"]
    assert all(len(c["textclf"]) == 2 and "best_peer" not in c for c in result["summary"])
    assert "| textclf |" in run.stdout and "PROBLEM" not in run.stdout


def test_agreement_reports_a_different_label_and_probability() -> None:
    reference = agreement.Answers(np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32), ["a", "b"])
    same = agreement.compare(reference, agreement.Answers(reference.probabilities.copy(), ["a", "b"]))
    assert same["disagreements"] == [] and same["max_abs_dp"] == 0.0 and agreement.agrees(same, 1e-5)
    other = agreement.compare(reference, agreement.Answers(np.array([[0.9, 0.1], [0.6, 0.4]], dtype=np.float32),
                                                           ["a", "a"]))
    assert other["disagreements"] == [1] and other["max_abs_dp"] == pytest.approx(0.4, abs=1e-6)
    assert not agreement.agrees(other, 1e-5)
    runs = [{"server": "peer", "length": "short", "concurrency": 1, "agreement": other}]
    rows = peers_report.agreement_by_server(runs, 1e-5)
    assert rows["peer"] == {"texts": 2, "same_labels": 1, "max_abs_dp": other["max_abs_dp"], "agrees": False}
    assert any("peer: 1/2 labels" in p for p in peers_report.problems(runs, rows))


def test_response_decoding_reads_raw_and_typed_contents() -> None:
    from textclf_protos.inference import grpc_service_pb2 as pb

    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    raw = pb.ModelInferResponse(
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="PROBABILITIES", datatype="FP32", shape=[1, 2]),
                 pb.ModelInferResponse.InferOutputTensor(name="LABEL", datatype="BYTES", shape=[1, 1])],
        raw_output_contents=[probabilities.tobytes(), b"\x05\x00\x00\x00sport"])
    typed = pb.ModelInferResponse(outputs=[
        pb.ModelInferResponse.InferOutputTensor(name="PROBABILITIES", datatype="FP32", shape=[1, 2],
                                                contents=pb.InferTensorContents(fp32_contents=[0.25, 0.75])),
        pb.ModelInferResponse.InferOutputTensor(name="LABEL", datatype="BYTES", shape=[1],
                                                contents=pb.InferTensorContents(bytes_contents=[b"sport"]))])
    for response in (raw, typed):
        decoded, labels = agreement.decode_response(response)
        np.testing.assert_array_equal(decoded, probabilities)
        assert labels == ["sport"]


def test_goal_verdicts_hold_only_when_textclfs_slower_run_meets_them() -> None:
    def run(server: str, position: int, rps: float, p99: float) -> dict:
        return {"server": server, "position": position, "length": "short", "concurrency": 1,
                "throughput_rps": rps, "p50_ms": 1.0, "p99_ms": p99, "requests": 10}

    cell = peers_report.summarize([run("textclf", 0, 140.0, 2.0), run("kserve", 1, 100.0, 3.0),
                                   run("textclf", 2, 125.0, 2.5)], ["textclf", "kserve", "textclf"])[0]
    assert cell["best_peer"] == "kserve" and cell["ratio_low"] == pytest.approx(1.25)
    assert cell["goal_throughput"] == "NOT MET" and cell["goal_p99"] == "MET"  # 1.25 < 1.3 at c=1


def test_forbidden_packages_catch_torch_and_cuda_but_not_the_peers() -> None:
    assert venvs.forbidden_packages(["torch", "nvidia-cudnn-cu12", "triton", "nvidia-pytriton", "tritonclient",
                                     "onnxruntime"]) == ["nvidia-cudnn-cu12", "torch", "triton"]
    for peer in venvs.PEERS:
        assert venvs.forbidden_packages(list(venvs.locked_packages(peer))) == [], peer


@pytest.mark.skipif(not all(venvs.is_current(p) for p in venvs.PEERS),
                    reason="peer venvs not installed (python bench/peers/venvs.py); CI does not install them")
def test_every_peer_serves_the_bundle_with_textclfs_labels(repository, tmp_path: Path) -> None:
    _, result = run_bench(repository, tmp_path / "peers.json",
                          ["textclf", "mlserver", "mlserver-nobatch", "kserve", "pytriton"])
    assert result["order"] == ["textclf", "mlserver", "mlserver-nobatch", "kserve", "pytriton", "textclf"]
    assert result["problems"] == []
    assert all(row["agrees"] for row in result["agreement"].values()) and len(result["agreement"]) == 5
    assert all("best_peer" in cell for cell in result["summary"])
