"""Faults (issue 5, issue 9): reloads. A hot reload by polling under traffic on both APIs fails no
call, and a load RPC cancelled by its caller still completes and is kept.

Real in-process servers (``ServerThread``), real gRPC clients for both APIs, metrics scraped over
HTTP; the blocking load is gated on a threading.Event (tests/support/hooks.py).
"""
from __future__ import annotations

import threading

import grpc
import pytest

from client.client import classify_request
from tests.support.api_stubs import CLASSIFY, INFER, Stubs
from tests.support.hooks import gate
from tests.support.metrics import metric, scrape, wait_until
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.security_server import AUTHORIZED, TOKEN
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc


# ----------------------------------------------------------------------------- hot reload, both APIs

def test_hot_reload_by_polling_under_traffic_on_both_apis(repo_path, start_server) -> None:
    make_onnx_bundle(repo_path, name="news", version=1, seed=1)
    server = start_server(max_versions=1, poll_interval=0.02, max_queue_delay_ms=2.0)
    stop = threading.Event()
    apis = [CLASSIFY, INFER] * 2
    seen: list[list[int]] = [[] for _ in apis]  # versions answering each thread's calls, in order
    errors: list[grpc.RpcError] = []

    def hammer(api: str, versions: list[int]) -> None:
        stubs = Stubs(server.address)
        try:
            while not stop.is_set():
                try:
                    versions.append(stubs.send(api, ["the market rallied", "team"]))
                except grpc.RpcError as exc:
                    errors.append(exc)
        finally:
            stubs.close()

    threads = [threading.Thread(target=hammer, args=(api, versions)) for api, versions in zip(apis, seen)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(1 in s for s in seen) or bool(errors), timeout=20,
                   what="every thread answered by version 1 before the first publish")
        for version in (2, 3):
            make_onnx_bundle(repo_path, name="news", version=version, seed=version)  # atomic publish
            server.wait_event(lambda e, v=version: e.kind == "loaded" and e.version == v)
            wait_until(lambda v=version: all(s[-10:] == [v] * 10 for s in seen) or bool(errors),
                       timeout=20, what=f"traffic answered by version {version}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert errors == []
    for api, versions in zip(apis, seen):
        assert {1, 2, 3} <= set(versions), api
        assert versions == sorted(versions), f"{api}: a call saw an older version after a newer one"
    samples = scrape(server.metrics_url)
    for api in (CLASSIFY, INFER):
        answered = sum(len(v) for a, v in zip(apis, seen) if a == api)
        assert metric(samples, "textclf_requests_total", api=api, code="OK") == answered
        assert metric(samples, "textclf_requests_total", api=api) == answered



def test_a_cancelled_load_rpc_completes_and_is_kept(bundles, repo_path, start_server) -> None:
    server = start_server(repository_control=True, control_token=TOKEN)
    make_onnx_bundle(repo_path, name="news", version=3, seed=3)
    entered, release = gate(server.app.repository, "_build_runtime")
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
