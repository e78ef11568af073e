"""textclf.v1 end to end: Classify, ClassifyStream, ListModels, GetModel, and bad requests."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from client.client import TextclfClient, classify_request
from tests.support.metrics import metric, scrape
from tests.support.texts import TEXTS
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc


def served_probabilities(result, labels: list[str]) -> np.ndarray:
    rows = []
    for p in result.predictions:
        row = dict(p.top)
        rows.append([row[label] for label in labels])
    return np.array(rows, dtype=np.float32)


def test_classify_default_version_matches_reference(client, bundles) -> None:
    result = client.classify(TEXTS, "news", top_k=3)
    assert (result.model, result.version) == ("news", 2)
    expected = bundles[2].expected_probabilities(TEXTS)
    np.testing.assert_allclose(served_probabilities(result, bundles[2].labels), expected, atol=1e-5)
    for p, row in zip(result.predictions, expected):
        assert p.label == bundles[2].labels[int(row.argmax())]
        assert p.probability == pytest.approx(float(row.max()), abs=1e-5)
        assert [s for _, s in p.top] == sorted((s for _, s in p.top), reverse=True)
        assert p.top[0] == (p.label, p.probability)


def test_classify_explicit_version_and_top_k(client, bundles) -> None:
    result = client.classify(TEXTS[:2], "news", version=1, top_k=2)
    assert result.version == 1
    expected = bundles[1].expected_probabilities(TEXTS[:2])
    assert all(len(p.top) == 2 for p in result.predictions)
    assert [p.label for p in result.predictions] == [bundles[1].labels[int(i)] for i in expected.argmax(axis=1)]
    default_k = client.classify(TEXTS[:1], "news")
    assert len(default_k.predictions[0].top) == 1


def test_truncation_flag(client, bundles) -> None:
    long_text = "market " * (bundles[2].card.max_len + 5)
    result = client.classify([long_text, "market"], "news")
    assert [p.truncated for p in result.predictions] == [True, False]


def test_classify_stream_answers_in_order_with_ids(client, bundles) -> None:
    requests = [(f"r{i}", classify_request([TEXTS[i % len(TEXTS)]], "news", version=1 + i % 2, top_k=1 + i % 3))
                for i in range(40)]
    requests.insert(7, ("bad", classify_request(["x"], "news", top_k=9)))
    answers = list(client.classify_stream(iter(requests)))
    assert [a.id for a in answers] == [i for i, _ in requests]
    bad = answers[7]
    assert not bad.ok and bad.code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in bad.message
    for (rid, request), answer in zip(requests, answers):
        if rid == "bad":
            continue
        assert answer.ok and answer.result.version == request.version
        assert len(answer.result.predictions[0].top) == request.top_k
        expected = bundles[request.version].expected_probabilities(list(request.texts))
        assert answer.result.predictions[0].probability == pytest.approx(float(expected.max()), abs=1e-5)


def test_list_and_get_models(client, bundles) -> None:
    (summary,) = client.list_models()
    assert (summary.name, list(summary.versions), summary.default_version) == ("news", [1, 2], 2)
    assert list(summary.labels) == bundles[2].labels
    info = client.get_model("news")
    assert (info.version, info.versions, info.default_version) == (2, [1, 2], 2)
    assert info.labels == bundles[2].labels and info.max_len == 64
    assert info.metrics == {"accuracy": 0.5, "macro_f1": 0.5}
    assert info.parity["passed"] is True
    assert client.get_model("news", version=1).version == 1


BAD_REQUESTS = [
    (pb.ClassifyRequest(model="news"), grpc.StatusCode.INVALID_ARGUMENT, "no texts"),
    (pb.ClassifyRequest(model="", texts=["x"]), grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
    (pb.ClassifyRequest(model="nope", texts=["x"]), grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded"),
    (pb.ClassifyRequest(model="../etc", texts=["x"]), grpc.StatusCode.INVALID_ARGUMENT, "invalid model name"),
    (pb.ClassifyRequest(model="news", version=7, texts=["x"]), grpc.StatusCode.NOT_FOUND, "no loaded version 7"),
    (pb.ClassifyRequest(model="news", version=0, texts=["x"]), grpc.StatusCode.INVALID_ARGUMENT, "version must be >= 1"),
    (pb.ClassifyRequest(model="news", version=-3, texts=["x"]), grpc.StatusCode.INVALID_ARGUMENT, "version must be >= 1"),
    (pb.ClassifyRequest(model="news", texts=["x"], top_k=0), grpc.StatusCode.INVALID_ARGUMENT, "top_k must be"),
    (pb.ClassifyRequest(model="news", texts=["x"], top_k=4), grpc.StatusCode.INVALID_ARGUMENT, "top_k must be"),
    (pb.ClassifyRequest(model="news", texts=["x"] * 300), grpc.StatusCode.INVALID_ARGUMENT, "too many texts: 300 > 256"),
    (pb.ClassifyRequest(model="news", texts=["é" * 40000]), grpc.StatusCode.INVALID_ARGUMENT, "80000 bytes"),
]


@pytest.mark.parametrize(("request_", "code", "message"), BAD_REQUESTS,
                         ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_requests_get_clear_errors_and_server_keeps_serving(server, bundles, request_, code, message) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.TextClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request_, timeout=10)
        assert info.value.code() == code
        assert message in info.value.details()
        ok = stub.Classify(pb.ClassifyRequest(model="news", texts=["the market"]), timeout=10)
        assert ok.predictions[0].label in bundles[2].labels
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_requests_total", api="textclf.v1.Classify", code=code.name) == 1
    assert metric(samples, "textclf_requests_total", api="textclf.v1.Classify", code="OK") == 1


def test_get_model_errors(client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.get_model("missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        client.get_model("news", version=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "loaded: 1, 2" in info.value.details()


def test_message_over_receive_limit_is_resource_exhausted(start_server, bundles) -> None:
    server = start_server(max_receive_message_bytes=1024)
    with TextclfClient(server.address, retry=False) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.classify(["market " * 400], "news")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.classify(["market"], "news").version == 2


def test_model_statistics_count_both_apis(server, client) -> None:
    """The core keeps the statistics: KServe ModelStatistics counts textclf.v1 traffic too, and
    a failure after the model was resolved (too many texts) counts as a failure."""
    from textclf_protos.inference import grpc_service_pb2 as kpb, grpc_service_pb2_grpc as kpb_grpc

    stub = kpb_grpc.GRPCInferenceServiceStub(client.channel)

    def stats():
        [entry] = stub.ModelStatistics(kpb.ModelStatisticsRequest(name="news", version="2")).model_stats
        return entry

    before = stats()
    client.classify(["the market rallied", "team"], "news")
    request = kpb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"goal")
    stub.ModelInfer(request)
    with pytest.raises(grpc.RpcError):
        client.classify(["x"] * 1000, "news")
    after = stats()
    assert after.inference_count - before.inference_count == 3
    assert after.execution_count - before.execution_count == 2
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
