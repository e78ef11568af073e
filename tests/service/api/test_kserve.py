"""KServe v2 API end to end: a real server on 127.0.0.1 (port 0), the real tritonclient.grpc.

The server runs on its own event loop in a background thread (``ServerThread`` of
tests/support/server_thread.py; tritonclient is a blocking client); models are tiny torch-free
ONNX bundles (tests/support/onnx_bundle.py, the repository in tests/support/kserve_repo.py).
"""
from __future__ import annotations

import json
import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.support.kserve_repo import TEXTS, repo  # noqa: F401 - repo is a fixture
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.server_thread import ServerThread
from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc
from textclf_protos.textclf.v1 import textclf_pb2, textclf_pb2_grpc

CONTROL_TOKEN = "kserve-tests-control-token"
AUTHORIZED = {"authorization": f"Bearer {CONTROL_TOKEN}"}
@pytest.fixture(scope="module")
def server(repo) -> Iterator[ServerThread]:
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=str(repo["root"]),
                        providers="cpu", max_queue_delay_ms=1.0, repository_control=True,
                        control_token=CONTROL_TOKEN)
    running = ServerThread(settings).start()
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as c:
        yield c


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def _text_input(texts: list[str], shape: list[int] | None = None) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(shape or [-1]))
    return tensor


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# ------------------------------------------------------------------ health and metadata

def test_liveness_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("news") and client.is_model_ready("news", "1") and client.is_model_ready("news", "2")
    assert not client.is_model_ready("news", "9") and not client.is_model_ready("nope")
    error = _error(lambda: client.is_model_ready("news", "v2"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "positive integer" in error.message()


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "textclf" and metadata.version
    assert "model_repository" in metadata.extensions


def test_model_metadata(client: triton.InferenceServerClient, repo) -> None:
    metadata = client.get_model_metadata("news", as_json=True)
    assert metadata["name"] == "news" and metadata["versions"] == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": ["-1"]}]
    classes = str(len(repo["news/2"].labels))
    assert metadata["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": ["-1", classes]},
                                   {"name": "LABEL", "datatype": "BYTES", "shape": ["-1"]}]
    assert client.get_model_metadata("news", "1").name == "news"
    assert _error(lambda: client.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"
    assert _error(lambda: client.get_model_metadata("news", "7")).status() == "StatusCode.NOT_FOUND"


def test_model_config_through_tritonclient(client: triton.InferenceServerClient, repo) -> None:
    assert "model_configuration" in client.get_server_metadata().extensions
    config = client.get_model_config("news", as_json=True)["config"]
    labels = repo["news/2"].labels
    assert (config["name"], config["platform"], config["backend"]) == ("news", "onnxruntime_onnx", "onnxruntime")
    assert config.get("max_batch_size", 0) == 0 and config["version_policy"] == {"all": {}}
    assert config["input"] == [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": ["-1"]}]
    assert config["output"] == [{"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": ["-1", str(len(labels))]},
                                {"name": "LABEL", "data_type": "TYPE_STRING", "dims": ["-1"]}]
    # the server's settings (module fixture: max_queue_delay_ms=1.0, default max_batch_size)
    assert config["dynamic_batching"] == {"preferred_batch_size": [64], "max_queue_delay_microseconds": "1000",
                                          "preserve_ordering": True}
    assert config["instance_group"] == [{"name": "news_0", "kind": "KIND_CPU", "count": 1}]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert json.loads(parameters["labels"]) == labels and parameters["version"] == "2"
    assert parameters["max_len"] == str(repo["news/2"].card.max_len)
    assert client.get_model_config("news", "1").config.parameters["version"].string_value == "1"
    assert _error(lambda: client.get_model_config("nope")).status() == "StatusCode.NOT_FOUND"
    assert _error(lambda: client.get_model_config("news", "7")).status() == "StatusCode.NOT_FOUND"
    assert _error(lambda: client.get_model_config("")).status() == "StatusCode.INVALID_ARGUMENT"


# ------------------------------------------------------------------ inference

def test_infer_raw_bytes_matches_reference_and_textclf_api(client, channel, repo) -> None:
    result = client.infer("news", [_text_input(TEXTS)], request_id="req-1")
    probabilities, labels = result.as_numpy("PROBABILITIES"), result.as_numpy("LABEL")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("news", "2", "req-1")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(TEXTS), len(repo["news/2"].labels))
    np.testing.assert_allclose(probabilities, repo["news/2"].expected_probabilities(TEXTS), atol=1e-5)
    assert [x.decode() for x in labels] == [repo["news/2"].labels[i] for i in probabilities.argmax(axis=1)]

    ours = textclf_pb2_grpc.TextClassifierStub(channel).Classify(
        textclf_pb2.ClassifyRequest(model="news", texts=TEXTS, top_k=len(repo["news/2"].labels)))
    from_textclf = np.array([[dict((s.label, s.probability) for s in p.top)[label] for label in repo["news/2"].labels]
                             for p in ours.predictions], dtype=np.float32)
    np.testing.assert_allclose(probabilities, from_textclf, atol=1e-6, rtol=0)
    assert [p.label for p in ours.predictions] == [x.decode() for x in labels]


def test_infer_explicit_version_and_shape_n_by_1(client, repo) -> None:
    result = client.infer("news", [_text_input(TEXTS[:2], [2, 1])], model_version="1")
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), repo["news/1"].expected_probabilities(TEXTS[:2]),
                               atol=1e-5)


def test_infer_with_contents_built_from_our_stubs(channel, repo) -> None:
    request = pb.ModelInferRequest(model_name="news", id="c1")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        t.encode() for t in TEXTS[:3])
    request.parameters["binary_data_output"].bool_param = False
    response = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents and response.id == "c1"
    probabilities, label = response.outputs
    np.testing.assert_allclose(np.array(probabilities.contents.fp32_contents).reshape(3, -1),
                               repo["news/2"].expected_probabilities(TEXTS[:3]), atol=1e-5)
    assert len(label.contents.bytes_contents) == 3


def test_requested_outputs(client, repo) -> None:
    only_label = client.infer("news", [_text_input(TEXTS)], outputs=[triton.InferRequestedOutput("LABEL")])
    assert [o.name for o in only_label.get_response().outputs] == ["LABEL"]
    assert only_label.as_numpy("PROBABILITIES") is None and len(only_label.as_numpy("LABEL")) == len(TEXTS)
    top2 = client.infer("news", [_text_input(TEXTS[:2])],
                        outputs=[triton.InferRequestedOutput("PROBABILITIES", class_count=2)]).as_numpy("PROBABILITIES")
    assert top2.shape == (2, 2)
    score, index, label = top2[0, 0].decode().split(":")
    assert repo["news/2"].labels[int(index)] == label


def test_streaming_infer_with_an_error_in_the_middle(client, repo) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("news", [_text_input(TEXTS[:2])], request_id="s1")
        client.async_stream_infer("nope", [_text_input(TEXTS[:1])], request_id="s2")
        client.async_stream_infer("news", [_text_input(TEXTS[2:])], model_version="1", request_id="s3")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    (first, e1), (second, e2), (third, e3) = got
    assert e1 is None and e3 is None and second is None
    assert "not loaded" in e2.message()
    assert first.get_response().id == "s1" and third.get_response().id == "s3"
    np.testing.assert_allclose(third.as_numpy("PROBABILITIES"), repo["news/1"].expected_probabilities(TEXTS[2:]),
                               atol=1e-5)


def test_statistics(client) -> None:
    client.infer("news", [_text_input(TEXTS[:3])], model_version="1")
    stats = client.get_inference_statistics("news", "1").model_stats
    assert len(stats) == 1 and stats[0].version == "1"
    assert stats[0].inference_count >= 3 and stats[0].inference_stats.success.count >= 1
    assert stats[0].inference_stats.success.ns > 0
    assert {("news", "1"), ("news", "2")} <= {(m.name, m.version) for m in client.get_inference_statistics().model_stats}
    assert _error(lambda: client.get_inference_statistics("", "1")).status() == "StatusCode.INVALID_ARGUMENT"


def test_timeout_parameter_is_a_deadline(client) -> None:
    # tritonclient's `timeout` is in microseconds: 1 us has passed before the batch forms
    error = _error(lambda: client.infer("news", [_text_input(["x"])], timeout=1))
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("news", [_text_input(["x"])], timeout=30_000_000).as_numpy("LABEL").shape == (1,)


# ------------------------------------------------------------------ errors

def test_unknown_model_is_not_found(client) -> None:
    error = _error(lambda: client.infer("nope", [_text_input(["x"])]))
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope'" in error.message()
    error = _error(lambda: client.infer("news", [_text_input(["x"])], model_version="5"))
    assert error.status() == "StatusCode.NOT_FOUND"


def test_bad_datatype_and_bad_input(client) -> None:
    bad = triton.InferInput("TEXT", [2], "INT64")
    bad.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    error = _error(lambda: client.infer("news", [bad]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "input 'TEXT' must have datatype BYTES, got 'INT64'"
    wrong_name = triton.InferInput("INPUT0", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    assert "unknown input 'INPUT0'" in _error(lambda: client.infer("news", [wrong_name])).message()
    error = _error(lambda: client.infer("news", [_text_input(["x"])], outputs=[triton.InferRequestedOutput("LOGITS")]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "LOGITS" in error.message()
    error = _error(lambda: client.infer("news", [_text_input([])]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "no texts" in error.message()


def test_invalid_utf8_and_server_still_answers(channel, client) -> None:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\x02\x00\x00\x00\xc3\x28")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not valid UTF-8" in info.value.details()
    assert client.infer("news", [_text_input(["still fine"])]).as_numpy("LABEL").shape == (1,)


def test_request_metric_counts_kserve_calls(server: ServerThread, client) -> None:
    client.infer("news", [_text_input(["x"])])
    counted = server.app.metrics.requests.labels("kserve.ModelInfer", "news", "2", "OK")._value.get()
    assert counted >= 1
    _error(lambda: client.infer("nope", [_text_input(["x"])]))
    assert server.app.metrics.requests.labels("kserve.ModelInfer", "", "", "NOT_FOUND")._value.get() >= 1


# ------------------------------------------------------------------ repository extension

def test_repository_index_load_unload(client, repo) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {("news", "1", "READY"), ("news", "2", "READY")}

    make_onnx_bundle(repo["root"], name="extra", version=1, seed=3)
    assert not client.is_model_ready("extra")
    client.load_model("extra", headers=AUTHORIZED)
    assert client.is_model_ready("extra", "1")
    assert client.infer("extra", [_text_input(["x"])]).get_response().model_version == "1"
    client.unload_model("extra", headers=AUTHORIZED)
    assert not client.is_model_ready("extra")
    states = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert states[("extra", "1")] == "UNAVAILABLE"
    assert _error(lambda: client.load_model("missing", headers=AUTHORIZED)).status() == "StatusCode.NOT_FOUND"
    error = _error(lambda: client.load_model("extra", headers=AUTHORIZED, config='{"backend": "python"}'))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'config' is not supported" in error.message()


def test_reflection_lists_and_describes_the_kserve_service(channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")]
    listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    assert "inference.GRPCInferenceService" in {s.name for s in listed.list_services_response.service}
    assert described.WhichOneof("message_response") == "file_descriptor_response", described
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in described.file_descriptor_response.file_descriptor_proto]
    # ours (served from the private pool), not tritonclient's grpc_service.proto loaded in this process
    assert files[0].name == "inference/grpc_service.proto"
    assert "ModelInfer" in [m.name for m in files[0].service[0].method]
