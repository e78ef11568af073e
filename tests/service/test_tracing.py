"""Tracing (service/tracing.py) against a real server on loopback: the SDK's in-memory exporter
receives the spans of real gRPC (textclf.v1, KServe v2, streams) and REST calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle
from tests.support.server_thread import ServerThread
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STAGES = {"tokenize", "queue wait", "batch run"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return make_onnx_bundle(tmp_path_factory.mktemp("models"), name="news", version=1, seed=1)


def _settings(bundle: TinyBundle, **overrides):
    from service.settings import Settings

    values = dict(host="127.0.0.1", port=0, metrics_port=-1, rest_host="127.0.0.1", rest_port=0,
                  model_repository=str(bundle.path.parents[1]), providers="cpu", max_queue_delay_ms=1.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def traced(bundle: TinyBundle) -> Iterator[tuple[ServerThread, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    server = ServerThread(_settings(bundle), span_exporter=exporter).start()
    yield server, exporter
    server.stop()


@pytest.fixture
def spans(traced) -> InMemorySpanExporter:
    traced[1].clear()
    return traced[1]


def _children(finished, parent) -> list:
    return [s for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _one(finished, name: str):
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def _assert_stages(finished, request_span) -> None:
    children = _children(finished, request_span)
    assert {c.name for c in children} == STAGES
    for child in children:
        assert child.context.trace_id == request_span.context.trace_id
        # recorded on the monotonic clock and converted: inside the request's span (1 ms slack)
        assert request_span.start_time - 1_000_000 <= child.start_time <= child.end_time <= request_span.end_time + 1_000_000
    batch = next(c for c in children if c.name == "batch run")
    assert batch.attributes["textclf.batch_size"] >= 1


def test_unary_call_continues_the_traceparent_with_stage_children(traced, spans) -> None:
    server, _ = traced
    with grpc.insecure_channel(server.address) as channel:
        answer = pb_grpc.TextClassifierStub(channel).Classify(
            pb.ClassifyRequest(model="news", texts=["the market rallied", "goal"]), metadata=[("traceparent", TRACEPARENT)])
    assert len(answer.predictions) == 2
    finished = spans.get_finished_spans()
    request_span = _one(finished, "textclf.v1.Classify")
    assert format(request_span.context.trace_id, "032x") == TRACE_ID
    assert format(request_span.parent.span_id, "016x") == PARENT_ID and request_span.parent.is_remote
    assert request_span.attributes["textclf.api"] == "textclf.v1.Classify"
    assert request_span.attributes["textclf.model"] == "news"
    assert request_span.attributes["textclf.model_version"] == "1"
    assert request_span.attributes["textclf.status"] == "OK"
    assert request_span.status.status_code != StatusCode.ERROR
    _assert_stages(finished, request_span)


def test_failed_call_span_has_error_status_and_no_traceparent_starts_a_trace(traced, spans) -> None:
    server, _ = traced
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as failure:
        pb_grpc.TextClassifierStub(channel).Classify(pb.ClassifyRequest(model="nope", texts=["x"]))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    request_span = _one(spans.get_finished_spans(), "textclf.v1.Classify")
    assert request_span.parent is None
    assert request_span.attributes["textclf.status"] == "NOT_FOUND"
    assert request_span.status.status_code == StatusCode.ERROR
    assert request_span.status.description == failure.value.details()


def test_kserve_infer_through_tritonclient_is_traced(traced, spans) -> None:
    server, _ = traced
    with triton.InferenceServerClient(server.address) as client:
        text = triton.InferInput("TEXT", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"the striker scored"], dtype=object))
        client.infer("news", [text], headers={"traceparent": TRACEPARENT})
    finished = spans.get_finished_spans()
    request_span = _one(finished, "kserve.ModelInfer")
    assert format(request_span.context.trace_id, "032x") == TRACE_ID
    _assert_stages(finished, request_span)


def test_stream_messages_get_a_span_each_under_the_stream_span(traced, spans) -> None:
    server, _ = traced
    messages = [pb.ClassifyStreamRequest(id=str(i), request=pb.ClassifyRequest(model=model, texts=["a text"]))
                for i, model in enumerate(["news", "nope", "news"])]
    with grpc.insecure_channel(server.address) as channel:
        answers = list(pb_grpc.TextClassifierStub(channel).ClassifyStream(iter(messages),
                                                                          metadata=[("traceparent", TRACEPARENT)]))
    assert [a.HasField("error") for a in answers] == [False, True, False]
    finished = spans.get_finished_spans()
    stream_span = _one(finished, "textclf.v1.ClassifyStream")
    assert format(stream_span.parent.span_id, "016x") == PARENT_ID
    per_message = [s for s in _children(finished, stream_span) if s.name == "textclf.v1.ClassifyStream.message"]
    assert len(per_message) == 3
    assert sorted(s.attributes["textclf.status"] for s in per_message) == ["NOT_FOUND", "OK", "OK"]
    for span in per_message:
        if span.attributes["textclf.status"] == "OK":
            _assert_stages(finished, span)


def test_rest_infer_is_traced_with_the_http_status(traced, spans) -> None:
    server, _ = traced
    body = json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a text"]}]})
    request = urllib.request.Request(f"{server.rest_url}/v2/models/news/infer", data=body.encode(),
                                     headers={"traceparent": TRACEPARENT, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    bad = urllib.request.Request(f"{server.rest_url}/v2/models/news/versions/9/infer", data=body.encode())
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(bad, timeout=10)
    assert failure.value.code == 404
    finished = spans.get_finished_spans()
    ok, missing = sorted((s for s in finished if s.name == "rest.ModelInfer"),
                         key=lambda s: s.attributes["http.response.status_code"])
    assert format(ok.parent.span_id, "016x") == PARENT_ID
    assert ok.attributes["http.response.status_code"] == 200 and ok.attributes["textclf.status"] == "OK"
    _assert_stages(finished, ok)
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status.status_code == StatusCode.ERROR


def test_sample_ratio_zero_records_only_traces_sampled_upstream(bundle: TinyBundle) -> None:
    exporter = InMemorySpanExporter()
    server = ServerThread(_settings(bundle, rest_port=-1, tracing_sample_ratio=0.0), span_exporter=exporter).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.TextClassifierStub(channel)
            stub.Classify(pb.ClassifyRequest(model="news", texts=["x"]))
            assert exporter.get_finished_spans() == ()
            stub.Classify(pb.ClassifyRequest(model="news", texts=["x"]), metadata=[("traceparent", TRACEPARENT)])
            not_sampled = TRACEPARENT[:-2] + "00"
            stub.Classify(pb.ClassifyRequest(model="news", texts=["x"]), metadata=[("traceparent", not_sampled)])
    finally:
        server.stop()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("textclf.v1.Classify") == 1 and set(names) == STAGES | {"textclf.v1.Classify"}


def test_tracing_off_imports_no_opentelemetry(bundle: TinyBundle) -> None:
    """With tracing off a serving process never imports OpenTelemetry (REST on, a real call)."""
    script = textwrap.dedent(f"""
        import sys
        import grpc
        from service.settings import Settings
        from tests.support.server_thread import ServerThread
        from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc
        settings = Settings(host="127.0.0.1", port=0, metrics_port=0, rest_host="127.0.0.1", rest_port=0,
                            model_repository={str(bundle.path.parents[1])!r}, providers="cpu")
        server = ServerThread(settings).start()
        assert server.app.core.tracer is None
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.TextClassifierStub(channel).Classify(pb.ClassifyRequest(model="news", texts=["x"]),
                                                         metadata=[("traceparent", {TRACEPARENT!r})])
        server.stop()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


class _Collector:
    """A minimal OTLP/gRPC trace collector on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        from concurrent import futures

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: list = []
        self.services: set[str] = set()
        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                for resource_spans in request.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            collector.services.add(attribute.value.string_value)
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend(scope.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_otlp_endpoint_setting_exports_to_a_collector(bundle: TinyBundle) -> None:
    """``python -m service --tracing-otlp-endpoint``: the spans reach an OTLP collector (flushed on
    SIGTERM at the latest), with the configured service name."""
    from tests.support.service_process import ServiceProcess

    collector = _Collector()
    process = ServiceProcess(bundle.path.parents[1], "--tracing-otlp-endpoint", f"http://127.0.0.1:{collector.port}",
                             "--tracing-service-name", "textclf-under-test")
    try:
        with grpc.insecure_channel(process.address) as channel:
            pb_grpc.TextClassifierStub(channel).Classify(pb.ClassifyRequest(model="news", texts=["x"]),
                                                         metadata=[("traceparent", TRACEPARENT)], timeout=10)
        process.process.terminate()
        assert process.wait(30) == 0
    finally:
        process.kill()
        collector.server.stop(None)
    names = {span.name for span in collector.spans}
    assert names == STAGES | {"textclf.v1.Classify"}
    assert collector.services == {"textclf-under-test"}
    assert {span.trace_id.hex() for span in collector.spans} == {TRACE_ID}
