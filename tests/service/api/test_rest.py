"""KServe v2 over HTTP/REST (service/api/rest.py) end to end: a real server on 127.0.0.1 with the
REST port on, the real ``tritonclient.http`` unchanged, and plain HTTP (http.client / urllib) as
in the README's curl examples."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import socket
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.http as triton_http
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from tritonclient.utils import InferenceServerException

from service.api import kserve_codec, rest
from service.errors import InvalidArgument
from service.settings import Settings
from tests.support.hooks import hold_inference
from tests.support.kserve_repo import TEXTS, repo  # noqa: F401 - the KServe tests' texts and news v1/v2 (fixture)
from tests.support.metrics import metric, scrape, wait_until
from tests.support.server_thread import ServerThread
from tests.support.workers import start_workers  # noqa: F401 - fixture
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc


def _settings(repo, **overrides) -> Settings:
    values = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, rest_host="127.0.0.1",
                  rest_port=0, model_repository=str(repo["root"]), providers="cpu", max_queue_delay_ms=1.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def server(repo) -> Iterator[ServerThread]:
    running = ServerThread(_settings(repo, max_texts_per_request=8, max_receive_message_bytes=256 * 1024)).start()
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(f"127.0.0.1:{server.app.rest_port}") as c:
        yield c


def _text_input(texts: list[str], binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("TEXT", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def _post(server: ServerThread, path: str, body: bytes | str | dict, headers: dict | None = None,
          connection: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", server.app.rest_port, timeout=10)
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    conn.request("POST", path, data, headers=headers or {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if connection is None:
        conn.close()
    return response.status, payload


def _get(server: ServerThread, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.app.rest_port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    status, body = response.status, response.read()
    conn.close()
    return status, json.loads(body) if body else {}


def _infer_body(texts: list, **extra) -> dict:
    return {"inputs": [{"name": "TEXT", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


# ------------------------------------------------------------------------ tritonclient.http

def test_tritonclient_http_health_and_metadata(client, repo) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("news") and client.is_model_ready("news", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("news", "7")
    assert client.get_server_metadata()["name"] == "textclf"
    meta = client.get_model_metadata("news")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["PROBABILITIES", "LABEL"]
    assert client.get_model_metadata("news", "1")["name"] == "news"


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infer_matches_the_model(client, repo, binary: bool) -> None:
    outputs = [triton_http.InferRequestedOutput("PROBABILITIES", binary_data=binary),
               triton_http.InferRequestedOutput("LABEL", binary_data=binary)]
    result = client.infer("news", [_text_input(TEXTS, binary)], outputs=outputs, request_id="r-1", model_version="1")
    expected = repo["news/1"].expected_probabilities(TEXTS)
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), expected, rtol=1e-5, atol=1e-6)
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("LABEL")]
    assert labels == [repo["news/1"].labels[i] for i in expected.argmax(axis=1)]
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == "1"


def test_tritonclient_http_default_version_outputs_and_classification(client, repo) -> None:
    result = client.infer("news", [_text_input(TEXTS[:2])])  # no outputs: all of them, binary
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), repo["news/2"].expected_probabilities(TEXTS[:2]),
                               rtol=1e-5, atol=1e-6)
    top = client.infer("news", [_text_input(TEXTS[:1])],
                       outputs=[triton_http.InferRequestedOutput("PROBABILITIES", class_count=2)])
    assert top.as_numpy("LABEL") is None
    score, index, label = top.as_numpy("PROBABILITIES")[0][0].decode().split(":")
    assert label == repo["news/2"].labels[int(index)] and 0 < float(score) <= 1


def test_tritonclient_http_errors_carry_the_message(client) -> None:
    with pytest.raises(InferenceServerException, match="not loaded") as failure:
        client.infer("nope", [_text_input(["x"])])
    assert failure.value.status() == "404"
    with pytest.raises(InferenceServerException, match="too many texts") as failure:
        client.infer("news", [_text_input(["x"] * 9)])
    assert failure.value.status() == "400"


def test_rest_and_grpc_answer_the_same(server) -> None:
    status, answer = _post(server, "/v2/models/news/infer", _infer_body(TEXTS))
    assert status == 200
    rest = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(answer["outputs"][0]["shape"])
    with grpc.insecure_channel(server.address) as channel:
        grpc_answer = pb_grpc.TextClassifierStub(channel).Classify(pb.ClassifyRequest(model="news", texts=TEXTS, top_k=3))
    for row, prediction in enumerate(grpc_answer.predictions):
        by_label = {score.label: score.probability for score in prediction.top}
        assert answer["outputs"][1]["data"][row] == prediction.label
        np.testing.assert_array_equal(rest[row], np.float32([by_label[label] for label in
                                                            ("business", "sport", "tech")]))


# ------------------------------------------------------------------------ plain HTTP (README curl)

def test_readme_curl_example_and_keep_alive(server) -> None:
    """Several requests on one connection (keep-alive), `outputs` selection and `id` echo."""
    conn = http.client.HTTPConnection("127.0.0.1", server.app.rest_port, timeout=10)
    body = _infer_body(["the striker scored twice"], id="42", outputs=[{"name": "LABEL"}])
    for _ in range(3):
        status, answer = _post(server, "/v2/models/news/infer", body, connection=conn)
        assert status == 200
        assert answer["id"] == "42" and answer["model_name"] == "news" and answer["model_version"] == "2"
        assert answer["outputs"] == [{"name": "LABEL", "datatype": "BYTES", "shape": [1],
                                      "data": [answer["outputs"][0]["data"][0]]}]
    conn.close()
    status, nested = _post(server, "/v2/models/news/versions/1/infer",
                           {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]})
    assert status == 200 and nested["outputs"][0]["shape"] == [2, 3]
    assert _get(server, "/v2/health/ready") == (200, {"ready": True})
    assert _get(server, "/v2/models/news/versions/2/ready") == (200, {"name": "news", "ready": True})


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/nope/infer", _infer_body(["x"]), 404, "not loaded"),
    ("/v2/models/news/versions/9/infer", _infer_body(["x"]), 404, "no loaded version 9"),
    ("/v2/models/news/versions/x/infer", _infer_body(["x"]), 400, "positive integer"),
    ("/v2/models/news/infer", "not json", 400, "not valid JSON"),
    ("/v2/models/news/infer", "[" * 200_000, 400, "nested too deeply"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [10**9], "datatype": "BYTES", "data": []}]},
     400, "too many texts: 1000000000 > 8"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                           "data": [""] * 1000}]}, 400, "too many texts: 1000 > 8"),
    ("/v2/models/news/infer", _infer_body([1]), 400, "element 0 is not a string"),
    ("/v2/models/news/infer", _infer_body(["\ud800"]), 400, "not valid UTF-8"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "FP32", "data": ["x"]}]},
     400, "datatype BYTES"),
    ("/v2/models/news/infer", {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
     400, "unknown input"),
    ("/v2/models/news/infer", _infer_body(["x", "y"], outputs=[{"name": "NOPE"}]), 400, "unknown requested output"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["x"]}]},
     400, "2 elements"),
    ("/v2/models/news/infer", _infer_body(["x"], parameters={"sequence_id": 3}), 400, "not supported"),
    ("/v2/models/news/infer", _infer_body(["x" * 70_000]), 400, "bytes; the limit"),
    ("/v2/nothing", {}, 404, "no such endpoint"),
    ("/v2/models/news/infer", _infer_body(["x"], parameters={"timeout": 10**30}), 400, "out of range"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [-10**30], "datatype": "BYTES", "data": []}]},
     400, "64-bit integers"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["x"],
                                           "parameters": {"binary_data_size": 5}}]}, 400, "does not fit"),
    ("/v2/models/news/infer", {"inputs": "TEXT"}, 400, "inputs must be a JSON array"),
    ("/v2/models/news/infer", [1, 2], 400, "must be a JSON object"),
    ("/v2/models/news/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                           "data": [""] * 20_000}]}, 400, "strings or more"),
    ("/v2/models/news/infer", {"x": [0] * 5000}, 400, "more than 4096 numbers"),
    ("/v2/models/news/infer", {"x": [{}] * 2000}, 400, "more than 1024 objects"),
    # 60 000 quote characters in a text (escaped in JSON) are not strings: answered
    ("/v2/models/news/infer", _infer_body(['"' * 60_000, 'say \\"hi\\"' * 1000]), 200, ""),
])
def test_bad_requests_get_the_grpc_rules_and_http_status(server, path, body, status, message) -> None:
    got, answer = _post(server, path, body)
    assert got == status, answer
    assert status == 200 or message in answer["error"]


def test_wrong_method_is_405_and_counted(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.app.rest_port, timeout=10)
    conn.request("GET", "/v2/models/news/infer")
    response = conn.getresponse()
    assert response.status == 405 and "use POST" in json.loads(response.read())["error"]
    conn.close()


def test_oversized_body_refused_from_content_length_before_it_is_read(server) -> None:
    """Only the head is sent: the 413 comes back at once, the body is never awaited."""
    with socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/news/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"max_receive_message_bytes" in answer and b"Connection: close" in answer


def test_chunked_and_compressed_bodies_are_refused(server) -> None:
    status, answer = _post(server, "/v2/models/news/infer", b"5\r\nhello\r\n0\r\n\r\n",
                           headers={"Transfer-Encoding": "chunked"})
    assert status == 411
    status, answer = _post(server, "/v2/models/news/infer", b"x", headers={"Content-Encoding": "gzip"})
    assert status == 415


def test_requests_are_counted_under_the_rest_api_label(server) -> None:
    before = scrape(server.metrics_url)
    assert _post(server, "/v2/models/news/infer", _infer_body(["x"]))[0] == 200
    assert _post(server, "/v2/models/nope/infer", _infer_body(["x"]))[0] == 404
    after = scrape(server.metrics_url)

    def delta(**labels: str) -> float:
        return metric(after, "textclf_requests_total", **labels) - metric(before, "textclf_requests_total", **labels)

    assert delta(api="rest.ModelInfer", model="news", version="2", code="OK") == 1
    assert delta(api="rest.ModelInfer", code="NOT_FOUND") == 1
    with socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/news/infer HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    final = scrape(server.metrics_url)
    assert (metric(final, "textclf_requests_total", api="rest.ModelInfer", code="RESOURCE_EXHAUSTED")
            - metric(before, "textclf_requests_total", api="rest.ModelInfer", code="RESOURCE_EXHAUSTED")) == 1
    assert (metric(final, "textclf_requests_total", api="rest.Unparsed", code="INVALID_ARGUMENT")
            - metric(before, "textclf_requests_total", api="rest.Unparsed", code="INVALID_ARGUMENT")) == 1


def test_idle_connections_cannot_exhaust_the_rest_port(repo) -> None:
    """rest_max_connections idle connections, then a new one: the longest idle is closed and the
    new request is answered."""
    server = ServerThread(_settings(repo, rest_max_connections=4, metrics_port=-1)).start()
    idle = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            idle.append(sock)  # kept open: idle, waiting for its next request
        assert _get(server, "/v2/health/live")[0] == 200
        assert idle[0].recv(4096) == b""  # the longest idle was closed to make room
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_queue_full_is_429_and_draining_is_503(repo) -> None:
    server = ServerThread(_settings(repo, max_queue_size=2, max_texts_per_request=2)).start()
    entered, release = hold_inference(server)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            computing = pool.submit(_post, server, "/v2/models/news/infer", _infer_body(["held"]))
            assert entered.wait(10)  # taken into a batch, held there
            queued = pool.submit(_post, server, "/v2/models/news/infer", _infer_body(["a", "b"]))
            labels = {"model": "news", "version": "2"}
            wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth", **labels) == 2,
                       what="two queued texts")
            status, answer = _post(server, "/v2/models/news/infer", _infer_body(["c"]))
            assert status == 429 and "queue is full" in answer["error"]
            release.set()
            assert computing.result(20)[0] == 200 and queued.result(20)[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", server.app.rest_port, timeout=10)
        conn.request("GET", "/v2/health/live")
        live = conn.getresponse()
        assert live.read() and live.getheader("Connection") == "keep-alive"
        server.app.core.start_draining()
        status, answer = _post(server, "/v2/models/news/infer", _infer_body(["a"]), connection=conn)
        assert status == 503 and "shutting down" in answer["error"]
        assert conn.sock is None  # draining: the answer said Connection: close, http.client closed it
        assert _get(server, "/v2/health/ready")[0] == 503
        assert _get(server, "/v2/health/live")[0] == 200
    finally:
        server.stop()


def test_rest_off_by_default_binds_nothing(repo) -> None:
    assert Settings().rest_port == -1
    server = ServerThread(_settings(repo, rest_port=-1, metrics_port=-1)).start()
    try:
        assert server.app.rest is None and server.app.rest_port is None
    finally:
        server.stop()


def test_header_timeout_closes_a_silent_connection(repo) -> None:
    server = ServerThread(_settings(repo, rest_idle_timeout=0.2, metrics_port=-1)).start()
    try:
        with socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # never finishes its head
            start = time.monotonic()
            assert sock.recv(4096) == b""
            assert time.monotonic() - start < 5
    finally:
        server.stop()


def test_rest_in_multi_worker_mode_reaches_every_worker(bundles, start_workers) -> None:
    """--workers 2: the supervisor reserves the REST port and every worker binds it (SO_REUSEPORT);
    new connections reach both workers, each request counted once in the one metrics endpoint."""
    server = start_workers("--rest-host", "127.0.0.1", "--rest-port", "0")
    port = int(re.search(r"REST http://127\.0\.0\.1:(\d+)/v2", server.log).group(1))
    answered: set[str] = set()
    requests = 0
    while len(answered) < 2 and requests < 64:
        before = server.worker_counts()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v2/models/news/infer", json.dumps(_infer_body(["the striker scored"])))
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["model_version"] == "2"
        conn.close()
        requests += 1
        after = server.worker_counts()
        answered |= {w for w, n in after.items() if n > before.get(w, 0)}
    assert answered == {"0", "1"}
    assert metric(scrape(server.metrics_url), "textclf_requests_total", api="rest.ModelInfer", code="OK") == requests


def test_expect_100_continue_as_curl_sends_it(server) -> None:
    """curl sends bodies over 1 KiB only after ``100 Continue``: the server says it, then answers."""
    body = json.dumps(_infer_body(["word " * 400])).encode()
    with socket.create_connection(("127.0.0.1", server.app.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/news/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'"LABEL"' in answer


# ------------------------------------------------------------------------ fuzzing the JSON decoding


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_tensor = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["TEXT", "X"]) | _json_values, "datatype": st.sampled_from(["BYTES", "FP32"]) | _json_values,
    "shape": st.lists(st.integers(min_value=-2**66, max_value=2**66), max_size=3) | _json_values,
    "data": st.lists(st.text(max_size=6) | _json_values, max_size=5) | _json_values,
    "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), _json_values, max_size=2) | _json_values})
_body = st.fixed_dictionaries({}, optional={
    "id": _json_values, "inputs": st.lists(_tensor, max_size=2) | _json_values,
    "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["LABEL", "PROBABILITIES", "Z"])}, optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification", "q"]), _json_values,
                                      max_size=2)}), max_size=3) | _json_values,
    "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "timeout", "priority", "sequence_id", "p"]),
                                  _json_values, max_size=3) | _json_values})


@hypothesis_settings(max_examples=int(os.environ.get("TEXTCLF_FUZZ_EXAMPLES", "200")), deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(body=_body, tail=st.binary(max_size=12), split=st.none() | st.integers(min_value=-2, max_value=400))
def test_rest_decoding_only_ever_raises_invalid_argument(body, tail, split) -> None:
    """Any JSON body (with or without a binary tail and header length) decodes or raises
    InvalidArgument: never another exception (a 500) for client input."""
    raw = json.dumps(body).encode()
    header_length = None if split is None else split if split != 0 else len(raw)
    try:
        message, _, _ = rest.infer_request(raw + (tail if header_length is not None else b""), header_length,
                                           "news", "", max_texts=8)
        kserve_codec.decode_request(message, max_texts=8)
    except InvalidArgument:
        pass
