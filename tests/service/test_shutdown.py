"""``python -m service`` as a real process: SIGTERM with calls in flight loses none."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from client.client import classify_request
from service import healthcheck
from tests.service.conftest import metric, scrape, wait_until
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"serving gRPC on [^:]+:(\d+); metrics http://[^:]+:(\d+)/metrics")


def start_process(repo: Path, *extra: str) -> tuple[subprocess.Popen, int, int]:
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1",
               "--metrics-port", "0", "--model-repository", str(repo), "--providers", "cpu", *extra]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stderr:
        match = READY_LINE.search(line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, int(match.group(1)), int(match.group(2))
    raise AssertionError(f"server exited with {process.wait()} before serving")


def test_sigterm_with_calls_in_flight_loses_none(bundles, repo_path) -> None:
    process, port, metrics_port = start_process(repo_path, "--max-queue-delay-ms", "600", "--grace-period", "10")
    address, metrics_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.TextClassifierStub(channel)
        in_flight = [stub.Classify.future(classify_request([f"text {i}", "market"], "news"), timeout=20)
                     for i in range(24)]
        wait_until(lambda: metric(scrape(metrics_url), "textclf_queue_depth") == 48, what="admitted calls queued")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: healthcheck.check(address, timeout=1) != "SERVING", what="health NOT_SERVING")
        with grpc.insecure_channel(address) as fresh:
            try:
                pb_grpc.TextClassifierStub(fresh).Classify(classify_request(["late"], "news"), timeout=5)
                raise AssertionError("a call after SIGTERM must be refused")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda f: f.result(), in_flight))
        assert [len(a.predictions) for a in answers] == [2] * 24
        assert process.wait(timeout=20) == 0
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_settings_exit_2_with_a_clear_message(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--max-batch-size", "0", "--providers", "tpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "max_batch_size=0: must be >= 1" in result.stderr and "providers='tpu'" in result.stderr
