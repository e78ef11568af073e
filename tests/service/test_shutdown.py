"""``python -m service`` as a real process: SIGTERM with calls in flight loses none."""
from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from client.client import classify_request
from service import healthcheck
from tests.support.metrics import metric, scrape, wait_until
from tests.support.service_process import ServiceProcess
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_with_calls_in_flight_loses_none(bundles, repo_path) -> None:
    server = ServiceProcess(repo_path, "--max-queue-delay-ms", "600", "--grace-period", "10")
    process, address, metrics_url = server.process, server.address, server.metrics_url
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
        server.kill()


def test_bad_settings_exit_2_with_a_clear_message(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--max-batch-size", "0", "--providers", "tpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "max_batch_size=0: must be >= 1" in result.stderr and "providers='tpu'" in result.stderr
