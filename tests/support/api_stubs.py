"""Both gRPC APIs on one channel, for the fault tests (tests/service/test_faults_*.py):
``send(api, texts)`` makes one unary call to textclf.v1 ``Classify`` or KServe ``ModelInfer``
and returns the version that answered."""
from __future__ import annotations

import grpc

from client.client import classify_request
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

CLASSIFY, INFER = "textclf.v1.Classify", "kserve.ModelInfer"


def own_connection(address: str) -> grpc.Channel:
    """A channel on a connection of its own (grpc shares one connection between equal channels)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def infer_request(texts: list[str], model: str = "news", version: str = "") -> kpb.ModelInferRequest:
    tensor = kpb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return kpb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor])


class Stubs:
    """One channel with both APIs' stubs; ``send(api, texts)`` makes one unary call."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.textclf = pb_grpc.TextClassifierStub(self.channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self.channel)

    def send(self, api: str, texts: list[str], timeout: float = 15.0) -> int:
        """The answering version."""
        if api == CLASSIFY:
            return self.textclf.Classify(classify_request(texts, "news"), timeout=timeout).version
        return int(self.kserve.ModelInfer(infer_request(texts), timeout=timeout).model_version)

    def future(self, api: str, texts: list[str], timeout: float = 30.0) -> grpc.Future:
        if api == CLASSIFY:
            return self.textclf.Classify.future(classify_request(texts, "news"), timeout=timeout)
        return self.kserve.ModelInfer.future(infer_request(texts), timeout=timeout)

    def close(self) -> None:
        self.channel.close()
