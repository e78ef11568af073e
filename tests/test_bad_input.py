"""Malformed and hostile requests against both gRPC APIs (issue 5, "Bad input").

One table, one parametrised test: every case is sent to a real server (127.0.0.1, port 0) through
real stubs, and must get its exact status code and a clear, short message. After each one the
server still answers valid requests on both APIs correctly (against the bundle's numpy
reference), and the request metric scraped from the real /metrics endpoint moved by exactly one
under the case's API and status code. A second table sends odd but valid texts (empty, control
characters, right-to-left, combining marks, emoji) and metadata: they get normal answers.

Model names that try to reach outside the repository carry a marker; a process-wide audit hook
proves the server never opens, lists or creates a path containing it.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.service.conftest import ServerThread, scrape
from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

MAX_TEXTS = 8
MAX_TEXT_BYTES = 1024
SMALL_RECEIVE_LIMIT = 4096
MAX_MESSAGE_CHARS = 300  # no error message may be longer (a 1 MB name must not come back)
MARKER = "zzqmarker"  # in every path-like model name; the audit hook looks for it
DEADLINE = 10.0
# repository control needs a bearer token where the server supports one (service/auth.py)
CONTROL_TOKEN = "bad-input-tests-control-token"
CONTROL = {"repository_control": True}
if "control_token" in Settings.model_fields:
    CONTROL["control_token"] = CONTROL_TOKEN
AUTHORIZED = [("authorization", f"Bearer {CONTROL_TOKEN}")]
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CLASSIFY, INFER = "textclf.v1.Classify", "kserve.ModelInfer"


# ------------------------------------------------------------------ filesystem watch

class _FsWatch:
    """Records audited filesystem events whose arguments mention MARKER (process-wide hook,
    installed once; Python audits open/listdir/scandir/mkdir/remove/rename, not stat)."""

    EVENTS = frozenset({"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename", "os.rmdir",
                        "os.symlink", "os.link", "os.chmod", "os.truncate", "shutil.rmtree", "shutil.copytree"})
    installed = False
    hits: list[tuple[str, str]] = []
    lock = threading.Lock()

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event in cls.EVENTS:
            text = " ".join(map(str, args))
            if MARKER in text:
                with cls.lock:
                    cls.hits.append((event, text[:200]))


# ------------------------------------------------------------------ servers and stubs

@dataclass
class Stubs:
    server: ServerThread
    channel: grpc.Channel
    textclf: pb_grpc.TextClassifierStub
    kserve: kpb_grpc.GRPCInferenceServiceStub
    triton: triton.InferenceServerClient
    bundle: TinyBundle

    def raw(self, method: str) -> Callable[..., bytes]:
        """A unary caller that sends ``bytes`` as they are (no client-side serialization)."""
        return self.channel.unary_unary(method)


def _start(root: Path, bundle: TinyBundle, **overrides) -> Iterator[Stubs]:
    values = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0, model_repository=str(root),
                  providers="cpu", grace_period=1.0, intra_op_threads=1, max_queue_delay_ms=0.0,
                  max_texts_per_request=MAX_TEXTS, max_text_bytes=MAX_TEXT_BYTES, **CONTROL)
    values.update(overrides)
    server = ServerThread(Settings(**values)).start()
    try:
        with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20),
                                                            ("grpc.enable_retries", 0)]) as channel, \
                triton.InferenceServerClient(server.address) as tc:
            yield Stubs(server, channel, pb_grpc.TextClassifierStub(channel),
                        kpb_grpc.GRPCInferenceServiceStub(channel), tc, bundle)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyBundle]:
    base = tmp_path_factory.mktemp("bad-input")
    root = base / "models"
    # a decoy next to the repository: a traversal that worked would find a model here
    make_onnx_bundle(base / f"{MARKER}-outside", name="news", version=1, seed=5)
    return root, make_onnx_bundle(root, name="news", version=1, seed=1)


@pytest.fixture(scope="module")
def main_server(repo) -> Iterator[Stubs]:
    _FsWatch.install()
    yield from _start(*repo)


@pytest.fixture(scope="module")
def small_server(repo) -> Iterator[Stubs]:
    """A server whose receive limit (max_receive_message_bytes) is tiny."""
    yield from _start(*repo, max_receive_message_bytes=SMALL_RECEIVE_LIMIT)


# ------------------------------------------------------------------ request builders

def classify(request: pb.ClassifyRequest, **kwargs) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    return lambda s: _unary(lambda: s.textclf.Classify(request, timeout=DEADLINE, **kwargs))


def infer(request: kpb.ModelInferRequest) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    return lambda s: _unary(lambda: s.kserve.ModelInfer(request, timeout=DEADLINE))


def raw_call(method: str, data: bytes) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    return lambda s: _unary(lambda: s.raw(method)(data, timeout=DEADLINE))


def _unary(send: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        send()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


def text_request(texts: list[str], **fields) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=fields.pop("model", "news"), texts=texts, **fields)


def infer_request(texts: list[bytes] | None = None, *, raw: bytes | None = None, shape: list[int] | None = None,
                  name: str = "TEXT", datatype: str = "BYTES", model: str = "news", version: str = "",
                  outputs: tuple[str, ...] = (), extra_inputs: int = 0) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=model, model_version=version)
    for _ in range(1 + extra_inputs):
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape if shape is not None else [len(texts or [])])
        if texts is not None:
            tensor.contents.bytes_contents.extend(texts)
    if raw is not None:
        request.raw_input_contents.append(raw)
    for output in outputs:
        request.outputs.add(name=output)
    return request


def load(name: str, parameters: dict | None = None) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    """RepositoryModelLoad with a valid bearer token (so the name itself is what is judged)."""
    request = kpb.RepositoryModelLoadRequest(model_name=name, parameters=parameters or {})
    return lambda s: _unary(lambda: s.kserve.RepositoryModelLoad(request, timeout=DEADLINE, metadata=AUTHORIZED))


def raw_items(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def classify_stream(*requests: pb.ClassifyRequest) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    """Sends valid, bad..., valid in one ClassifyStream; returns the bad message's in-stream error
    after checking the stream answered every message, in order, and went on."""

    def send(s: Stubs) -> tuple[grpc.StatusCode, str]:
        messages = [pb.ClassifyStreamRequest(id="first", request=text_request(["the market"]))]
        messages += [pb.ClassifyStreamRequest(id=f"bad{i}", request=r) for i, r in enumerate(requests)]
        messages.append(pb.ClassifyStreamRequest(id="last", request=text_request(["the match"])))
        answers = list(s.textclf.ClassifyStream(iter(messages), timeout=DEADLINE))
        assert [a.id for a in answers] == [m.id for m in messages]
        assert answers[0].HasField("response") and answers[-1].HasField("response")
        bad = answers[1]
        assert bad.HasField("error")
        return grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == bad.error.code)), bad.error.message

    return send


def infer_stream(request: kpb.ModelInferRequest) -> Callable[[Stubs], tuple[grpc.StatusCode | None, str]]:
    """KServe stream errors carry only a message (Triton's protocol): the code is checked in the metric."""

    def send(s: Stubs) -> tuple[grpc.StatusCode | None, str]:
        good = infer_request([b"the market"])
        answers = list(s.kserve.ModelStreamInfer(iter([good, request, good]), timeout=DEADLINE))
        assert len(answers) == 3 and not answers[0].error_message and not answers[2].error_message
        assert answers[1].error_message
        return None, answers[1].error_message

    return send


def tritonclient_infer(texts: list[str], **kwargs) -> Callable[[Stubs], tuple[grpc.StatusCode, str]]:
    def send(s: Stubs) -> tuple[grpc.StatusCode, str]:
        text = triton.InferInput("TEXT", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        options = dict(kwargs)
        try:
            s.triton.infer(options.pop("model", "news"), [text], **options)
        except InferenceServerException as exc:
            return grpc.StatusCode[exc.status().removeprefix("StatusCode.")], exc.message()
        return OK, ""

    return send


# ------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Case:
    id: str
    send: Callable[[Stubs], tuple[grpc.StatusCode | None, str]]
    code: grpc.StatusCode
    fragment: str
    api: str | None  # the metric's api label; None: refused by gRPC itself, before any servicer
    server: str = "main"
    no_fs: bool = False  # a path-like name: the server must not touch the filesystem with it
    also: dict[str, dict[str, float]] = field(default_factory=dict)  # other counts the call moves


TOO_LONG = "é" * (MAX_TEXT_BYTES // 2 + 1)  # MAX_TEXT_BYTES + 2 UTF-8 bytes, fewer characters
MEGA_NAME = "a" * (1 << 20)
# hand-written ClassifyRequest wire bytes: field 1 (model) "news", field 3 (texts) with invalid UTF-8
CLASSIFY_BAD_UTF8 = b"\x0a\x04news\x1a\x02\xc3\x28"
CLASSIFY_BAD_UTF8_NAME = b"\x0a\x02\xff\xfe\x1a\x01x"

# a stream case sends valid, bad, valid: the stream and its two valid messages count as OK
STREAM_OK = {"textclf.v1.ClassifyStream": {"OK": 1.0}, "textclf.v1.ClassifyStream.message": {"OK": 2.0}}
KSERVE_STREAM_OK = {"kserve.ModelStreamInfer": {"OK": 1.0}, "kserve.ModelStreamInfer.message": {"OK": 2.0}}

CASES = [
    # --- textclf.v1 Classify: texts
    Case("textclf-no-texts", classify(text_request([])), INVALID, "no texts", CLASSIFY),
    Case("textclf-too-many-texts", classify(text_request(["x"] * (MAX_TEXTS + 1))), INVALID,
         f"too many texts: {MAX_TEXTS + 1} > {MAX_TEXTS}", CLASSIFY),
    Case("textclf-text-over-byte-limit", classify(text_request(["ok", TOO_LONG])), INVALID,
         f"text 1 is {MAX_TEXT_BYTES + 2} bytes; the limit is {MAX_TEXT_BYTES}", CLASSIFY),
    Case("textclf-invalid-utf8-text-on-the-wire", raw_call("/textclf.v1.TextClassifier/Classify", CLASSIFY_BAD_UTF8),
         INVALID, "not a valid textclf.v1.ClassifyRequest", CLASSIFY),
    Case("textclf-invalid-utf8-model-on-the-wire",
         raw_call("/textclf.v1.TextClassifier/Classify", CLASSIFY_BAD_UTF8_NAME),
         INVALID, "not a valid textclf.v1.ClassifyRequest", CLASSIFY),
    Case("textclf-garbage-bytes", raw_call("/textclf.v1.TextClassifier/Classify", b"\xff\xff\xff\xff"),
         INVALID, "not a valid textclf.v1.ClassifyRequest", CLASSIFY),
    # --- textclf.v1 Classify: model and version
    Case("textclf-empty-model", classify(text_request(["x"], model="")), INVALID, "model is required", CLASSIFY),
    Case("textclf-unknown-model", classify(text_request(["x"], model="nope")), NOT_FOUND,
         "model 'nope' is not loaded", CLASSIFY),
    Case("textclf-unknown-version", classify(text_request(["x"], version=7)), NOT_FOUND,
         "has no loaded version 7 (loaded: 1)", CLASSIFY),
    Case("textclf-huge-version", classify(text_request(["x"], version=2**63 - 1)), NOT_FOUND,
         "has no loaded version 9223372036854775807", CLASSIFY),
    Case("textclf-version-0", classify(text_request(["x"], version=0)), INVALID, "version must be >= 1, got 0",
         CLASSIFY),
    Case("textclf-version-negative", classify(text_request(["x"], version=-1)), INVALID,
         "version must be >= 1, got -1", CLASSIFY),
    Case("textclf-model-dotdot", classify(text_request(["x"], model=f"../{MARKER}-outside/news")), INVALID,
         "invalid model name", CLASSIFY, no_fs=True),
    Case("textclf-model-slash", classify(text_request(["x"], model=f"{MARKER}/news")), INVALID,
         "invalid model name", CLASSIFY, no_fs=True),
    Case("textclf-model-absolute", classify(text_request(["x"], model=f"/etc/{MARKER}")), INVALID,
         "invalid model name", CLASSIFY, no_fs=True),
    Case("textclf-model-nul", classify(text_request(["x"], model=f"news\x00{MARKER}")), INVALID,
         "invalid model name", CLASSIFY, no_fs=True),
    Case("textclf-model-1mb", classify(text_request(["x"], model=MEGA_NAME)), INVALID, "invalid model name",
         CLASSIFY),
    Case("textclf-model-uppercase", classify(text_request(["x"], model="NEWS")), INVALID, "invalid model name",
         CLASSIFY),
    # --- textclf.v1 Classify: top_k (explicit 0 is refused: absent already means the default, 1)
    Case("textclf-top-k-0", classify(text_request(["x"], top_k=0)), INVALID,
         "top_k must be between 1 and the model's 3 labels, got 0", CLASSIFY),
    Case("textclf-top-k-negative", classify(text_request(["x"], top_k=-2)), INVALID, "got -2", CLASSIFY),
    Case("textclf-top-k-beyond-labels", classify(text_request(["x"], top_k=4)), INVALID, "3 labels, got 4",
         CLASSIFY),
    Case("textclf-top-k-int32-max", classify(text_request(["x"], top_k=2**31 - 1)), INVALID, "got 2147483647",
         CLASSIFY),
    # --- textclf.v1 ClassifyStream / GetModel
    Case("textclf-stream-no-texts", classify_stream(text_request([])), INVALID, "no texts",
         "textclf.v1.ClassifyStream.message", also=STREAM_OK),
    Case("textclf-stream-unknown-version", classify_stream(text_request(["x"], version=3)), NOT_FOUND,
         "no loaded version 3", "textclf.v1.ClassifyStream.message", also=STREAM_OK),
    Case("textclf-stream-garbage-message",
         raw_call("/textclf.v1.TextClassifier/ClassifyStream", b"\x12\x03\xff\xff\xff"), INVALID,
         "not a valid textclf.v1.ClassifyStreamRequest", "textclf.v1.ClassifyStream"),
    Case("textclf-getmodel-dotdot", lambda s: _unary(lambda: s.textclf.GetModel(
        pb.GetModelRequest(name=f"../{MARKER}"), timeout=DEADLINE)), INVALID, "invalid model name",
         "textclf.v1.GetModel", no_fs=True),
    Case("textclf-getmodel-version-0", lambda s: _unary(lambda: s.textclf.GetModel(
        pb.GetModelRequest(name="news", version=0), timeout=DEADLINE)), INVALID, "version must be >= 1",
         "textclf.v1.GetModel"),
    # --- KServe ModelInfer: tensors
    Case("kserve-no-inputs", infer(kpb.ModelInferRequest(model_name="news")), INVALID,
         "expected exactly one input, 'TEXT'; got 0", INFER),
    Case("kserve-two-inputs", infer(infer_request([b"x"], extra_inputs=1)), INVALID,
         "expected exactly one input, 'TEXT'; got 2", INFER),
    Case("kserve-wrong-input-name", infer(infer_request([b"x"], name="INPUT0")), INVALID,
         "unknown input 'INPUT0'", INFER),
    Case("kserve-wrong-datatype", infer(infer_request([b"x"], datatype="FP32")), INVALID,
         "must have datatype BYTES, got 'FP32'", INFER),
    Case("kserve-wrong-shape-rank", infer(infer_request([b"x", b"y"], shape=[1, 2])), INVALID,
         "must have shape [N] or [N, 1], got [1, 2]", INFER),
    Case("kserve-negative-shape", infer(infer_request([b"x"], shape=[-1])), INVALID, "negative dimension", INFER),
    Case("kserve-shape-data-mismatch", infer(infer_request([b"x"], shape=[2])), INVALID,
         "(2 elements) but 1 elements of data", INFER),
    Case("kserve-huge-shape-small-raw", infer(infer_request(raw=raw_items(b"x"), shape=[2**62])), INVALID,
         "too many texts: 4611686018427387904 >", INFER),
    Case("kserve-zero-texts", infer(infer_request([], shape=[0])), INVALID, "no texts", INFER),
    Case("kserve-too-many-texts", infer(infer_request([b"x"] * (MAX_TEXTS + 1))), INVALID,
         f"too many texts: {MAX_TEXTS + 1} > {MAX_TEXTS}", INFER),
    Case("kserve-text-over-byte-limit", infer(infer_request(raw=raw_items(TOO_LONG.encode()), shape=[1])),
         INVALID, f"text 0 is {MAX_TEXT_BYTES + 2} bytes", INFER),
    Case("kserve-contents-and-raw", infer(infer_request([b"x"], raw=raw_items(b"x"))), INVALID,
         "both contents and raw_input_contents", INFER),
    Case("kserve-truncated-raw", infer(infer_request(raw=raw_items(b"hello")[:-2], shape=[1])), INVALID,
         "truncated: element 0 declares 5 bytes, 3 remain", INFER),
    Case("kserve-raw-trailing-bytes", infer(infer_request(raw=raw_items(b"x") + b"\x00", shape=[1])), INVALID,
         "1 bytes after the 1 elements", INFER),
    Case("kserve-invalid-utf8-contents", infer(infer_request([b"ok", b"\xc3\x28"])), INVALID,
         "element 1 is not valid UTF-8", INFER),
    Case("kserve-invalid-utf8-raw", infer(infer_request(raw=raw_items(b"\xff\xfe"), shape=[1])), INVALID,
         "element 0 is not valid UTF-8 (byte 0)", INFER),
    Case("kserve-fp32-contents", infer(kpb.ModelInferRequest(model_name="news", inputs=[
        kpb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1],
                                               contents=kpb.InferTensorContents(fp32_contents=[1.0]))])),
         INVALID, "goes in contents.bytes_contents, not fp32_contents", INFER),
    Case("kserve-unknown-output", infer(infer_request([b"x"], outputs=("LOGITS",))), INVALID,
         "unknown requested output 'LOGITS'", INFER),
    Case("kserve-duplicate-output", infer(infer_request([b"x"], outputs=("LABEL", "LABEL"))), INVALID,
         "output 'LABEL' is requested twice", INFER),
    Case("kserve-sequence-parameter", infer(kpb.ModelInferRequest(
        model_name="news", inputs=infer_request([b"x"]).inputs,
        parameters={"sequence_id": kpb.InferParameter(int64_param=1)})), INVALID, "not sequence models", INFER),
    Case("kserve-garbage-bytes", raw_call("/inference.GRPCInferenceService/ModelInfer", b"\x0a\x02\xff\xfe"),
         INVALID, "not a valid inference.ModelInferRequest", INFER),
    # --- KServe ModelInfer: model and version
    Case("kserve-empty-model", infer(infer_request([b"x"], model="")), INVALID, "model name is required", INFER),
    Case("kserve-unknown-model", tritonclient_infer(["x"], model="nope"), NOT_FOUND, "model 'nope' is not loaded",
         INFER),
    Case("kserve-unknown-version", tritonclient_infer(["x"], model_version="9"), NOT_FOUND,
         "has no loaded version 9", INFER),
    Case("kserve-version-0", infer(infer_request([b"x"], version="0")), INVALID,
         "a positive integer, got '0'", INFER),
    Case("kserve-version-negative", infer(infer_request([b"x"], version="-1")), INVALID, "got '-1'", INFER),
    Case("kserve-version-abc", tritonclient_infer(["x"], model_version="abc"), INVALID, "got 'abc'", INFER),
    Case("kserve-version-leading-zero", infer(infer_request([b"x"], version="01")), INVALID, "got '01'", INFER),
    Case("kserve-model-dotdot", infer(infer_request([b"x"], model=f"../{MARKER}-outside/news")), INVALID,
         "invalid model name", INFER, no_fs=True),
    Case("kserve-model-slash", infer(infer_request([b"x"], model=f"news/{MARKER}")), INVALID,
         "invalid model name", INFER, no_fs=True),
    Case("kserve-model-nul", infer(infer_request([b"x"], model=f"\x00{MARKER}")), INVALID, "invalid model name",
         INFER, no_fs=True),
    Case("kserve-model-1mb", infer(infer_request([b"x"], model=MEGA_NAME)), INVALID, "invalid model name", INFER),
    Case("kserve-stream-bad-datatype", infer_stream(infer_request([b"x"], datatype="INT64")), INVALID,
         "must have datatype BYTES", "kserve.ModelStreamInfer.message", also=KSERVE_STREAM_OK),
    # --- KServe metadata / readiness / repository with hostile names
    Case("kserve-metadata-version-abc", lambda s: _unary(lambda: s.kserve.ModelMetadata(
        kpb.ModelMetadataRequest(name="news", version="abc"), timeout=DEADLINE)), INVALID, "got 'abc'",
         "kserve.ModelMetadata"),
    Case("kserve-config-version-negative", lambda s: _unary(lambda: s.kserve.ModelConfig(
        kpb.ModelConfigRequest(name="news", version="-1"), timeout=DEADLINE)), INVALID, "got '-1'",
         "kserve.ModelConfig"),
    Case("kserve-config-dotdot", lambda s: _unary(lambda: s.kserve.ModelConfig(
        kpb.ModelConfigRequest(name=f"../{MARKER}"), timeout=DEADLINE)), INVALID, "invalid model name",
         "kserve.ModelConfig", no_fs=True),
    Case("kserve-ready-dotdot", lambda s: _unary(lambda: s.kserve.ModelReady(
        kpb.ModelReadyRequest(name=f"../{MARKER}"), timeout=DEADLINE)), INVALID, "invalid model name",
         "kserve.ModelReady", no_fs=True),
    Case("kserve-load-dotdot", load(f"../{MARKER}-outside"), INVALID, "invalid model name",
         "kserve.RepositoryModelLoad", no_fs=True),
    Case("kserve-load-absolute", load(f"/tmp/{MARKER}"), INVALID, "invalid model name",
         "kserve.RepositoryModelLoad", no_fs=True),
    Case("kserve-load-file-upload", load("news", {"file:1/model.onnx": kpb.ModelRepositoryParameter(
        bytes_param=b"\x00" * 16)}), INVALID, "models load from their bundles in the repository only",
         "kserve.RepositoryModelLoad"),
    # --- over the receive limit: refused by gRPC itself, before any servicer code runs
    Case("textclf-over-receive-limit", classify(text_request(["market " * 1000])), EXHAUSTED,
         "larger than max", None, server="small"),
    Case("kserve-over-receive-limit", infer(infer_request([b"market " * 1000])), EXHAUSTED,
         "larger than max", None, server="small"),
]


def _requests_by_code(samples: dict, api: str) -> dict[str, float]:
    codes: dict[str, float] = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == "textclf_requests_total" and labels.get("api") == api:
            codes[labels["code"]] = codes.get(labels["code"], 0.0) + value
    return codes


def _delta(before: dict, after: dict, api: str) -> dict[str, float]:
    old, new = _requests_by_code(before, api), _requests_by_code(after, api)
    return {code: new.get(code, 0.0) - old.get(code, 0.0) for code in new if new.get(code, 0.0) != old.get(code, 0.0)}


def assert_still_serves(s: Stubs) -> None:
    """Both APIs still answer a valid request, with the reference probabilities."""
    texts = ["the striker scored twice", "shares of the bank rose"]
    expected = s.bundle.expected_probabilities(texts)
    answer = s.textclf.Classify(text_request(texts, top_k=3), timeout=DEADLINE)
    served = np.array([[dict((t.label, t.probability) for t in p.top)[label] for label in s.bundle.labels]
                       for p in answer.predictions], dtype=np.float32)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    text = triton.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = s.triton.infer("news", [text])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), expected, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request(case: Case, request: pytest.FixtureRequest) -> None:
    s: Stubs = request.getfixturevalue("main_server" if case.server == "main" else "small_server")
    before = scrape(s.server.metrics_url)
    hits_before = len(_FsWatch.hits)

    code, message = case.send(s)

    if code is not None:
        assert code == case.code, f"{case.id}: got {code.name}: {message}"
    assert case.fragment in message, f"{case.id}: {message!r}"
    assert len(message) <= MAX_MESSAGE_CHARS, f"{case.id}: message of {len(message)} characters"
    assert "Traceback" not in message and "Unexpected <class" not in message
    if case.no_fs:
        assert _FsWatch.installed and _FsWatch.hits[hits_before:] == []
    assert_still_serves(s)

    after = scrape(s.server.metrics_url)
    # assert_still_serves made one OK call on each API; the case is counted once under its code
    expected = {api: {"OK": 1.0} for api in (CLASSIFY, INFER)}
    for api, counts in case.also.items():
        expected.setdefault(api, {}).update(counts)
    if case.api is not None:
        expected.setdefault(case.api, {})
        expected[case.api][case.code.name] = expected[case.api].get(case.code.name, 0.0) + 1.0
    # (api None: gRPC refused the message before any servicer ran, so no request is counted)
    apis = set(expected) | {"textclf.v1.ClassifyStream", "textclf.v1.ClassifyStream.message",
                            "kserve.ModelStreamInfer", "kserve.ModelStreamInfer.message"}
    moved = {api: _delta(before, after, api) for api in apis}
    assert {api: d for api, d in moved.items() if d} == expected


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert {c.api.split(".")[0] for c in CASES if c.api} == {"textclf", "kserve"}


# ------------------------------------------------------------------ odd but valid input

ODD_TEXTS = {
    "empty": "",
    "whitespace-only": " \t\n\r\u00a0\u2003",
    "nul-and-controls": "market\x00rallied\x01\x07\x1b[31m\x7f",
    "right-to-left": "\u202eshares rose\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "combining-marks": "e\u0301\u0302\u0303\u0304" * 40 + " bank",
    "zalgo": "t" + "\u0336\u0337\u0338" * 100,
    "emoji": "the team won 🏆⚽️👍🏽 👨‍👩‍👧‍👦",
    "4-byte-chars": "𝔱𝔥𝔢 𝔪𝔞𝔯𝔨𝔢𝔱 \U0001f600 \U00020000 \U0010ffff",
    "bom-and-zero-width": "\ufeffthe\u200b\u200dmatch\u2060",
    "noncharacters": "\ufffe\uffff\ufdd0 bank",
    "at-the-byte-limit": "x" * MAX_TEXT_BYTES,
    "many-tokens-truncated": "market " * 140,  # > max_len (64) tokens, < MAX_TEXT_BYTES
}


@pytest.mark.parametrize("kind", sorted(ODD_TEXTS))
def test_odd_but_valid_texts_get_normal_answers_on_both_apis(main_server: Stubs, kind: str) -> None:
    s, text = main_server, ODD_TEXTS[kind]
    texts = [text, "the striker scored twice"]
    expected = s.bundle.expected_probabilities(texts)
    answer = s.textclf.Classify(text_request(texts, top_k=3), timeout=DEADLINE)
    assert len(answer.predictions) == 2
    for prediction, row in zip(answer.predictions, expected):
        assert prediction.label == s.bundle.labels[int(row.argmax())]
        assert prediction.probability == pytest.approx(float(row.max()), abs=1e-5)
    # at the byte limit, one 64 KiB word is past the character budget (8 x max_len): cut and flagged
    assert answer.predictions[0].truncated is (kind in ("many-tokens-truncated", "at-the-byte-limit"))
    # KServe: raw and typed contents give the same answer
    result = s.triton.infer("news", [_triton_text(texts)])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), expected, atol=1e-5)
    typed = s.kserve.ModelInfer(infer_request([t.encode() for t in texts]), timeout=DEADLINE)
    probabilities = np.frombuffer(typed.raw_output_contents[0], dtype="<f4").reshape(2, -1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def _triton_text(texts: list[str]) -> triton.InferInput:
    text = triton.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return text


ODD_METADATA = {
    "unknown-keys": [("x-unknown", "1"), ("x-textclf-model", "other"), ("x-texts", "ignored")],
    "binary-value": [("x-blob-bin", b"\x00\xff\xfe\x00")],
    "long-value": [("x-long", "v" * 4000)],
    "repeated-key": [("x-dup", "1"), ("x-dup", "2"), ("x-dup", "3")],
    "junk-authorization": [("authorization", "Bearer not-a-token")],
    "odd-printable-value": [("x-odd", " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ")],
}


@pytest.mark.parametrize("kind", sorted(ODD_METADATA))
def test_unknown_and_odd_metadata_is_ignored(main_server: Stubs, kind: str) -> None:
    s, metadata = main_server, ODD_METADATA[kind]
    before = scrape(s.server.metrics_url)
    answer = s.textclf.Classify(text_request(["the market"]), metadata=metadata, timeout=DEADLINE)
    assert answer.predictions[0].label == s.bundle.labels[int(s.bundle.expected_probabilities(["the market"]).argmax())]
    typed = s.kserve.ModelInfer(infer_request([b"the market"]), metadata=metadata, timeout=DEADLINE)
    assert typed.model_name == "news"
    after = scrape(s.server.metrics_url)
    assert _delta(before, after, CLASSIFY) == {"OK": 1.0} and _delta(before, after, INFER) == {"OK": 1.0}


def test_metadata_over_the_header_limit_is_refused_by_grpc_and_the_server_goes_on(main_server: Stubs) -> None:
    """Initial metadata beyond gRPC's hard header limit (16 KiB) never reaches a servicer."""
    s = main_server
    before = scrape(s.server.metrics_url)
    code, message = _unary(lambda: s.textclf.Classify(text_request(["x"]), metadata=[("x-huge", "v" * 64_000)],
                                                      timeout=DEADLINE))
    assert code == EXHAUSTED and "metadata size exceeds hard limit" in message
    assert len(message) <= MAX_MESSAGE_CHARS
    assert_still_serves(s)
    assert _delta(before, scrape(s.server.metrics_url), CLASSIFY) == {"OK": 1.0}


def test_stream_message_over_the_receive_limit_ends_the_stream(small_server: Stubs) -> None:
    """gRPC ends the whole stream with RESOURCE_EXHAUSTED. grpc.aio shows the servicer a failed
    read as the end of the request stream and then cancels it, so the stream is counted as OK or
    CANCELLED, depending on timing, never as what the client saw (a known limit, docs/security.md)."""
    s = small_server
    before = scrape(s.server.metrics_url)
    messages = [pb.ClassifyStreamRequest(id="big", request=text_request(["market " * 1000]))]
    with pytest.raises(grpc.RpcError) as info:
        list(s.textclf.ClassifyStream(iter(messages), timeout=DEADLINE))
    assert info.value.code() == EXHAUSTED and "larger than max" in info.value.details()
    assert_still_serves(s)
    after = scrape(s.server.metrics_url)
    assert _delta(before, after, "textclf.v1.ClassifyStream").keys() <= {"OK", "CANCELLED"}
    assert _delta(before, after, "textclf.v1.ClassifyStream.message") == {}
