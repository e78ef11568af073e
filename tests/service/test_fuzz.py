"""Property-based fuzzing of request decoding and of the live servicers (issue 5, "Fuzzing").

Properties, for both APIs:
* decoding (codecs, the lenient protobuf parsing at the boundary, core text validation) only
  ever succeeds or raises ``InvalidArgument``, never anything else;
* a real in-process server, sent random structurally valid and invalid requests through real
  stubs (unary and streaming, and raw random or mutated bytes), answers every call before its
  deadline with OK or a client-error code — never INTERNAL/UNKNOWN, never a hang — and still
  answers valid requests correctly afterwards; no error is logged and no INTERNAL is counted.

tests/service/api/test_kserve_codec.py already fuzzes the TEXT tensor itself (raw bytes, shape,
datatype, name); here the KServe codec is fuzzed over what that leaves out: parameters of every
kind, requested outputs and their parameters, several inputs, every ``contents`` field.

Bounded by default (the file runs in well under 30 s on 2 cores). Longer runs:

    TEXTCLF_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/service/test_fuzz.py

(each test runs 2 x TEXTCLF_FUZZ_EXAMPLES examples; default 60; about 6 minutes per 2500 on 2 cores).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from service.api import kserve_codec, textclf_codec
from service.api.boundary import UndecodableRequest, lenient_deserializer
from service.core import InferenceCore
from service.errors import InvalidArgument
from service.settings import Settings
from tests.support.bad_input_server import (MAX_TEXT_BYTES, MAX_TEXTS, Stubs, assert_still_serves,  # noqa: F401
                                            repo, start_stubs)
from tests.support.metrics import scrape
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.textclf.v1 import textclf_pb2 as pb

EXAMPLES = int(os.environ.get("TEXTCLF_FUZZ_EXAMPLES", "60"))
DEADLINE = 10.0  # per call: an answer later than this is a hang
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
# examples per test: live tests (through the server) and pure decoding tests alike
FUZZ = settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                 HealthCheck.data_too_large])
PURE = settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABELS = 3  # the tiny bundle's labels

# ------------------------------------------------------------------ strategies

INT64 = st.one_of(st.integers(-2, 3), st.sampled_from([-2**63, 2**63 - 1, 2**31, -2**31 - 1]))
INT32 = st.one_of(st.integers(-2, 5), st.sampled_from([-2**31, 2**31 - 1]))
MODEL_NAMES = st.one_of(st.sampled_from(["news", "news", "news", "", "nope", "NEWS", "../news", "news/1", "news\x00",
                                         "a" * 65, ".", "..", "-x", "news ", "ne\u0301ws"]),
                        st.text(max_size=12))
TEXTS = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "x" * MAX_TEXT_BYTES,
                                                                  "é" * (MAX_TEXT_BYTES // 2 + 1), "market " * 80])),
                 max_size=MAX_TEXTS + 2)
KSERVE_VERSIONS = st.one_of(st.sampled_from(["", "", "1", "2", "0", "-1", "01", "abc", "1.0", " 1", "9" * 30]),
                            st.text(max_size=4))


@st.composite
def classify_requests(draw: st.DrawFn) -> pb.ClassifyRequest:
    request = pb.ClassifyRequest(model=draw(MODEL_NAMES), texts=draw(TEXTS))
    if draw(st.booleans()):
        request.version = draw(INT64)
    if draw(st.booleans()):
        request.top_k = draw(INT32)
    return request


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, kpb.InferParameter]:
    keys = st.one_of(st.sampled_from(["binary_data_output", "timeout", "priority", "sequence_id", "classification",
                                      "binary_data", "shared_memory_region", "custom"]), st.text(max_size=6))
    values = st.one_of(st.builds(kpb.InferParameter, bool_param=st.booleans()),
                       st.builds(kpb.InferParameter, int64_param=INT64),
                       st.builds(kpb.InferParameter, uint64_param=st.sampled_from([0, 1, 2, 2**64 - 1])),
                       st.builds(kpb.InferParameter, double_param=st.floats(allow_nan=True)),
                       st.builds(kpb.InferParameter, string_param=st.text(max_size=6)),
                       st.just(kpb.InferParameter()))
    return draw(st.dictionaries(keys, values, max_size=3))


def _without_short_timeouts(params: dict[str, kpb.InferParameter]) -> dict[str, kpb.InferParameter]:
    """A `timeout` parameter is a real deadline: keep the live fuzz from asking for 1 us ones."""
    timeout = params.get("timeout")
    if timeout is not None and timeout.WhichOneof("parameter_choice") in ("int64_param", "uint64_param"):
        value = timeout.int64_param or timeout.uint64_param
        if 0 < value < 5_000_000:
            params["timeout"] = kpb.InferParameter(int64_param=5_000_000)
    return params


@st.composite
def contents(draw: st.DrawFn) -> kpb.InferTensorContents:
    kind = draw(st.sampled_from(["bytes", "bytes", "bytes", "fp32", "int64", "bool", "none"]))
    if kind == "bytes":
        items = draw(st.lists(st.one_of(st.binary(max_size=12), st.text(max_size=12).map(str.encode)),
                              max_size=MAX_TEXTS + 1))
        return kpb.InferTensorContents(bytes_contents=items)
    if kind == "fp32":
        return kpb.InferTensorContents(fp32_contents=draw(st.lists(st.floats(width=32), max_size=3)))
    if kind == "int64":
        return kpb.InferTensorContents(int64_contents=draw(st.lists(INT64, max_size=3)))
    if kind == "bool":
        return kpb.InferTensorContents(bool_contents=draw(st.lists(st.booleans(), max_size=3)))
    return kpb.InferTensorContents()


@st.composite
def infer_requests(draw: st.DrawFn, live: bool = False) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=draw(MODEL_NAMES), model_version=draw(KSERVE_VERSIONS),
                                    id=draw(st.text(max_size=8)))
    params = draw(parameters())
    for key, value in (_without_short_timeouts(params) if live else params).items():
        request.parameters[key].CopyFrom(value)
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["TEXT", "TEXT", "TEXT", "text", ""])),
                                    datatype=draw(st.sampled_from(["BYTES", "BYTES", "BYTES", "FP32", "bytes"])))
        data = draw(contents())
        use_raw = draw(st.booleans())
        if use_raw and data.bytes_contents:
            request.raw_input_contents.append(kserve_codec.encode_bytes_raw(list(data.bytes_contents)))
            if draw(st.booleans()):  # corrupt it: cut, extend or flip
                raw = request.raw_input_contents[-1]
                request.raw_input_contents[-1] = draw(st.sampled_from([raw[:-1], raw + b"\x00", raw[1:], b""]))
            count = len(data.bytes_contents)
        else:
            tensor.contents.CopyFrom(data)
            count = max(len(data.bytes_contents), len(data.fp32_contents), len(data.int64_contents),
                        len(data.bool_contents))
        shape = draw(st.one_of(st.just([count]), st.just([count, 1]),
                               st.lists(st.integers(-2, MAX_TEXTS + 2), max_size=3)))
        tensor.shape.extend(shape)
        if draw(st.integers(0, 9)) == 0:
            tensor.parameters["shared_memory_region"].string_param = "r"
    for _ in range(draw(st.integers(0, 3))):
        output = request.outputs.add(name=draw(st.sampled_from(["PROBABILITIES", "LABEL", "LOGITS", ""])))
        if draw(st.booleans()):
            for key, value in draw(parameters()).items():
                output.parameters[key].CopyFrom(value)
    return request


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """Byte-level mutations of a valid serialized message: flips, cuts, insertions."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
            at = draw(st.integers(0, max(len(buffer) - 1, 0)))
            if op == "flip" and buffer:
                buffer[at] = draw(st.integers(0, 255))
            elif op == "cut" and buffer:
                del buffer[at:at + draw(st.integers(1, 4))]
            elif op == "insert":
                buffer[at:at] = draw(st.binary(min_size=1, max_size=4))
            else:
                del buffer[at:]
        return bytes(buffer)

    return mutate()


VALID_CLASSIFY = pb.ClassifyRequest(model="news", texts=["the market", "ünï 🙂"], top_k=2).SerializeToString()
VALID_INFER = kpb.ModelInferRequest(model_name="news", inputs=[kpb.ModelInferRequest.InferInputTensor(
    name="TEXT", datatype="BYTES", shape=[1], contents=kpb.InferTensorContents(bytes_contents=[b"the market"]))],
    outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name="LABEL")]).SerializeToString()
RAW_METHODS = {
    "/textclf.v1.TextClassifier/Classify": (pb.ClassifyRequest, VALID_CLASSIFY),
    "/textclf.v1.TextClassifier/GetModel": (pb.GetModelRequest, pb.GetModelRequest(name="news").SerializeToString()),
    "/inference.GRPCInferenceService/ModelInfer": (kpb.ModelInferRequest, VALID_INFER),
    "/inference.GRPCInferenceService/ModelMetadata": (kpb.ModelMetadataRequest,
                                                      kpb.ModelMetadataRequest(name="news").SerializeToString()),
    "/inference.GRPCInferenceService/ModelReady": (kpb.ModelReadyRequest,
                                                   kpb.ModelReadyRequest(name="news").SerializeToString()),
}
RAW_BYTES = st.sampled_from(sorted(RAW_METHODS)).flatmap(
    lambda method: st.tuples(st.just(method), st.one_of(st.binary(max_size=64), mutated(RAW_METHODS[method][1]))))


# ------------------------------------------------------------------ decoding (pure)

CORE = InferenceCore(Settings(max_texts_per_request=MAX_TEXTS, max_text_bytes=MAX_TEXT_BYTES),
                     repository=None, metrics=None)  # validate_texts reads the settings only


@PURE
@given(request=classify_requests())
def test_textclf_decoding_only_raises_invalid_argument(request: pb.ClassifyRequest) -> None:
    request = pb.ClassifyRequest.FromString(request.SerializeToString())  # what the server sees
    try:
        name = textclf_codec.model_name_of(request.model)
        version = textclf_codec.version_of(request)
        top_k = textclf_codec.top_k_of(request, LABELS)
        CORE.validate_texts(list(request.texts))
    except InvalidArgument as exc:
        assert exc.message and len(exc.message) < 300
        return
    assert name == request.model and (version is None or version >= 1) and 1 <= top_k <= LABELS
    assert 1 <= len(request.texts) <= MAX_TEXTS
    assert all(len(t.encode()) <= MAX_TEXT_BYTES for t in request.texts)


@PURE
@given(request=infer_requests())
def test_kserve_decoding_of_whole_requests_only_raises_invalid_argument(request: kpb.ModelInferRequest) -> None:
    try:
        decoded = kserve_codec.decode_request(request, max_texts=MAX_TEXTS)
    except InvalidArgument as exc:
        assert exc.message and len(exc.message) < 400
        return
    (tensor,) = request.inputs
    assert len(decoded.texts) == tensor.shape[0] and tensor.name == "TEXT" and tensor.datatype == "BYTES"
    assert decoded.version is None or decoded.version >= 1
    assert all(o.name in kserve_codec.OUTPUT_NAMES for o in decoded.outputs)
    # and whatever decodes can be answered: encode a fake result for it
    n = len(decoded.texts)
    probabilities = np.full((n, LABELS), 1.0 / LABELS, dtype=np.float32)
    result = type("R", (), dict(model_name="news", model_version=1, labels=["a", "b", "c"],
                                probabilities=probabilities, predicted=["a"] * n))()
    response = kserve_codec.encode_response(decoded, result)
    assert [o.name for o in response.outputs] == [o.name for o in decoded.outputs]


@PURE
@given(method_and_bytes=RAW_BYTES)
def test_any_request_bytes_parse_or_are_undecodable(method_and_bytes: tuple[str, bytes]) -> None:
    method, data = method_and_bytes
    message_type = RAW_METHODS[method][0]
    parsed = lenient_deserializer(message_type.FromString)(data)
    if isinstance(parsed, UndecodableRequest):
        assert parsed.message_type == message_type.DESCRIPTOR.full_name
        assert isinstance(parsed.error(), InvalidArgument)
    else:
        assert isinstance(parsed, message_type)


# ------------------------------------------------------------------ live servicers

class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live(repo) -> Iterator[Stubs]:
    """The server under fuzz; at the end: it still serves, logged no error, counted no INTERNAL."""
    errors = _ErrorLog()
    watched = [logging.getLogger(name) for name in ("service", "grpc")]
    for logger in watched:
        logger.addHandler(errors)
    try:
        for stubs in start_stubs(*repo):
            yield stubs
            assert_still_serves(stubs)
            codes = {dict(labels)["code"] for (name, labels), _ in scrape(stubs.server.metrics_url).items()
                     if name == "textclf_requests_total"}
            assert not codes & {"INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}, codes
    finally:
        for logger in watched:
            logger.removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []


def _code(send) -> tuple[grpc.StatusCode, object]:
    start = time.monotonic()
    try:
        answer = send()
    except grpc.RpcError as exc:
        assert time.monotonic() - start < DEADLINE
        assert len(exc.details() or "") < 400
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, answer


@FUZZ
@given(request=classify_requests())
def test_live_classify(live: Stubs, request: pb.ClassifyRequest) -> None:
    code, answer = _code(lambda: live.textclf.Classify(request, timeout=DEADLINE))
    assert code in CLIENT_ERRORS, (code, answer)
    if code == grpc.StatusCode.OK:
        assert len(answer.predictions) == len(request.texts) and answer.model == "news"
        k = request.top_k if request.HasField("top_k") else 1
        for prediction in answer.predictions:
            scores = [t.probability for t in prediction.top]
            assert len(scores) == k and scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1


@FUZZ
@given(request=infer_requests(live=True))
def test_live_model_infer(live: Stubs, request: kpb.ModelInferRequest) -> None:
    code, answer = _code(lambda: live.kserve.ModelInfer(request, timeout=DEADLINE))
    assert code in CLIENT_ERRORS, (code, answer)
    if code == grpc.StatusCode.OK:
        assert answer.model_name == "news" and answer.id == request.id


@FUZZ
@given(method_and_bytes=RAW_BYTES)
def test_live_raw_and_mutated_bytes(live: Stubs, method_and_bytes: tuple[str, bytes]) -> None:
    method, data = method_and_bytes
    code, answer = _code(lambda: live.raw(method)(data, timeout=DEADLINE))
    assert code in CLIENT_ERRORS, (method, data, code, answer)


@FUZZ
@given(requests=st.lists(classify_requests(), min_size=1, max_size=6), garbage_at=st.none() | st.integers(0, 6))
def test_live_classify_stream(live: Stubs, requests: list[pb.ClassifyRequest], garbage_at: int | None) -> None:
    messages = [pb.ClassifyStreamRequest(id=str(i), request=r).SerializeToString() for i, r in enumerate(requests)]
    if garbage_at is not None:  # an undecodable message ends the stream after the ones before it
        messages.insert(min(garbage_at, len(messages)), b"\x0a\x02\xff\xfe")
    call = live.channel.stream_stream("/textclf.v1.TextClassifier/ClassifyStream",
                                      response_deserializer=pb.ClassifyStreamResponse.FromString)
    answers: list[pb.ClassifyStreamResponse] = []
    code, details = _code(lambda: answers.extend(call(iter(messages), timeout=DEADLINE)))
    answered = len(messages) if garbage_at is None else min(garbage_at, len(requests))
    if garbage_at is None:
        assert code == grpc.StatusCode.OK, (code, details)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid textclf.v1.ClassifyStreamRequest" in details
    assert [a.id for a in answers] == [str(i) for i in range(answered)]
    for answer in answers:
        if answer.HasField("error"):
            assert grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == answer.error.code)) in CLIENT_ERRORS
        else:
            assert len(answer.response.predictions) == len(requests[int(answer.id)].texts)


@FUZZ
@given(requests=st.lists(infer_requests(live=True), min_size=1, max_size=5))
def test_live_model_stream_infer(live: Stubs, requests: list[kpb.ModelInferRequest]) -> None:
    # (the codes counted for the stream messages are checked once, at the end, by the fixture)
    answers = list(live.kserve.ModelStreamInfer(iter(requests), timeout=DEADLINE))
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers):
        assert answer.infer_response.id == request.id
        assert len(answer.error_message) < 400
        assert answer.error_message != "internal error"
