"""The server that hostile input is thrown at (tests/service/test_bad_input.py and
tests/service/test_fuzz.py): a real in-process server with small request limits and repository
control on, one channel with stubs for both gRPC APIs plus tritonclient, and the check that it
still answers valid requests correctly on both APIs.

Its repository has a decoy next to it, in a directory whose name holds ``MARKER``: a model name
that reached outside the repository would find a model there (test_bad_input's audit hook looks
for the marker in every path the process touches).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from service.settings import Settings
from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle
from tests.support.server_thread import ServerThread
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

MAX_TEXTS = 8
MAX_TEXT_BYTES = 1024
MARKER = "zzqmarker"  # in every path-like model name; the audit hook looks for it
DEADLINE = 10.0
# repository control needs a bearer token where the server supports one (service/auth.py)
CONTROL_TOKEN = "bad-input-tests-control-token"
CONTROL = {"repository_control": True}
if "control_token" in Settings.model_fields:
    CONTROL["control_token"] = CONTROL_TOKEN
AUTHORIZED = [("authorization", f"Bearer {CONTROL_TOKEN}")]


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


def start_stubs(root: Path, bundle: TinyBundle, **overrides) -> Iterator[Stubs]:
    """Serve ``root`` (``bundle`` is its news v1) with the limits above, ``overrides`` applied;
    yields the stubs, then stops the server."""
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


def text_request(texts: list[str], **fields) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=fields.pop("model", "news"), texts=texts, **fields)


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
