"""Smaller defects of issue 9 (item 6), each with a test that fails without its fix.

Real in-process servers (``ServerThread``) and real gRPC stubs; unlucky timing is made
deterministic by gating the blocking work (a bundle load, an inference) on a threading.Event, or
by injecting one failure into the batcher.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from client.client import classify_request
from service.settings import SettingsError, load_settings
from tests.support.metrics import metric, scrape, wait_until
from tests.support.onnx_bundle import make_onnx_bundle
from tests.service.test_faults_signals import external_data, truncated_onnx, wrong_sha
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-control-token-for-tests"
AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)
LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def test_settings_refuse_more_texts_per_request_than_the_queue_holds() -> None:
    with pytest.raises(SettingsError, match="max_texts_per_request=10: must be <= max_queue_size=5"):
        load_settings(["--max-texts-per-request", "10", "--max-queue-size", "5"], environ={})
    result = subprocess.run([sys.executable, "-m", "service", "--max-texts-per-request", "10", "--max-queue-size", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and "max_texts_per_request=10: must be <= max_queue_size=5" in problems[0], result.stderr
    load_settings(["--max-texts-per-request", "5", "--max-queue-size", "5"], environ={})  # equal is fine


def test_repository_index_shows_no_paths_nor_library_errors(bundles, repo_path, start_server, caplog) -> None:
    """RepositoryIndex needs no token: refusal reasons name the stage and our own finding, never an
    absolute path or onnxruntime's exception text (those go to the log)."""
    server = start_server()
    for version, damage in ((3, truncated_onnx), (4, wrong_sha), (5, external_data)):
        damage(repo_path, version)
    with caplog.at_level(logging.WARNING, logger="service.repository"):
        server.call(server.app.repository.poll_once())
    with grpc.insecure_channel(server.address) as channel:
        index = kpb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=10)
    reasons = {int(m.version): m.reason for m in index.models if m.state != "READY"}
    assert set(reasons) == {3, 4, 5}, reasons
    for reason in reasons.values():
        assert str(repo_path) not in reason and "/tmp" not in reason, reason
        assert "ONNXRuntimeError" not in reason and "INVALID_PROTOBUF" not in reason, reason
    assert reasons[3].startswith("refused (load)") and "server log" in reasons[3]
    assert "news/4: sha256 mismatch for model.onnx" in reasons[4]
    assert "external data" in reasons[5]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ONNXRuntimeError" in logged and str(repo_path) in logged  # the details are in the log


def _gate(target: object, name: str) -> tuple[threading.Event, threading.Event]:
    """Replace ``target.name`` (a blocking call run in a worker thread) with one that signals
    ``entered`` and then waits for ``release``."""
    original = getattr(target, name)
    entered, release = threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        entered.set()
        assert release.wait(30), "test never released the gate"
        return original(*args, **kwargs)

    setattr(target, name, gated)
    return entered, release


def test_a_cancelled_load_rpc_completes_and_is_kept(bundles, repo_path, start_server) -> None:
    server = start_server(repository_control=True, control_token=TOKEN)
    make_onnx_bundle(repo_path, name="news", version=3, seed=3)
    entered, release = _gate(server.app.repository, "_build_runtime")
    with grpc.insecure_channel(server.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(model_name="news"), metadata=AUTHORIZED,
                                     timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert entered.is_set()
        states = {int(m.version): m.state for m in stub.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=5).models}
        assert states[3] == "LOADING"
        release.set()
        server.wait_event(lambda e: e.kind == "loaded" and e.version == 3)
        states = {int(m.version): m.state for m in stub.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=5).models}
        assert states == {1: "READY", 2: "READY", 3: "READY"}
        answer = pb_grpc.TextClassifierStub(channel).Classify(classify_request(["the market"], "news"), timeout=10)
        assert answer.version == 3


def test_batching_off_a_cancelled_call_holds_its_slot_while_its_work_runs(bundles, start_server) -> None:
    """Submit-and-cancel must not bypass ``max_queue_size``: the slot is freed when the work ends."""
    server = start_server(batching=False, max_queue_size=2, max_texts_per_request=2)
    model = server.app.repository.get("news")
    entered, release = _gate(model.runtime, "run")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.TextClassifierStub(channel)
            first = stub.Classify.future(classify_request(["the market"], "news"), timeout=30)
            assert entered.wait(10)
            first.cancel()
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_requests_total", code="CANCELLED") == 1,
                       what="the cancelled call counted")
            assert metric(scrape(server.metrics_url), "textclf_queue_depth") == 1  # its work still runs
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(classify_request(["a", "b"], "news"), timeout=3)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
            release.set()
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 0, what="slot freed")
            assert len(stub.Classify(classify_request(["a", "b"], "news"), timeout=10).predictions) == 2
    finally:
        release.set()


@pytest.mark.parametrize(("control", "metadata", "code"), [
    (False, AUTHORIZED, grpc.StatusCode.UNIMPLEMENTED),
    (True, (), grpc.StatusCode.UNAUTHENTICATED),
    (True, (("authorization", "Bearer " + "x" * len(TOKEN)),), grpc.StatusCode.PERMISSION_DENIED),
    (True, AUTHORIZED, grpc.StatusCode.INVALID_ARGUMENT),  # only now are the bytes parsed
], ids=["control-off", "no-token", "wrong-token", "right-token"])
def test_control_rpcs_check_the_token_before_parsing_the_request(bundles, start_server, control, metadata,
                                                                 code) -> None:
    server = start_server(repository_control=control, control_token=TOKEN if control else "")
    garbage = b"\xff\xff\xff\xff not a protobuf message"
    with grpc.insecure_channel(server.address) as channel:
        for method in (LOAD, LOAD.replace("Load", "Unload")):
            raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                raw(garbage, metadata=metadata, timeout=10)
            assert info.value.code() == code, (method, info.value)
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_requests_total", api="kserve.RepositoryModelLoad", code=code.name) == 1


def fail_next_batch(scheduler) -> None:
    """Make the batcher loop of ``scheduler`` (a DynamicBatcher) raise once, deterministically."""
    original = scheduler._take_batch
    failures = [RuntimeError("injected batcher failure")]

    def take_batch_failing_once():
        if failures:
            raise failures.pop()
        return original()

    scheduler._take_batch = take_batch_failing_once


def test_a_failing_batcher_loop_fails_its_pending_calls_with_internal(bundles, start_server, caplog) -> None:
    server = start_server()
    fail_next_batch(server.app.repository.get("news").scheduler)
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.ERROR, logger="service.batching"):
        stub = pb_grpc.TextClassifierStub(channel)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(classify_request(["the market"], "news"), timeout=5)  # no deadline would hang forever
        assert info.value.code() == grpc.StatusCode.INTERNAL and time.monotonic() - start < 4
        assert stub.Classify(classify_request(["the market"], "news"), timeout=10).version == 2  # loop survived
    assert any("injected batcher failure" in (r.exc_text or "") or r.exc_info for r in caplog.records)
