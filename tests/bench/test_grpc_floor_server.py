"""The gRPC floor server's kinds answer textclf.v1 Classify over a real connection, and the raw kind
never parses what it receives (so a request that is not a ClassifyRequest at all is answered too,
where the parsing kinds fail it)."""
from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import serving_support as support  # noqa: E402
from textclf_protos.textclf.v1 import textclf_pb2 as pb  # noqa: E402

CLASSIFY = "/textclf.v1.TextClassifier/Classify"
NOT_A_CLASSIFY_REQUEST = b"\xff\xff\xff"  # a truncated varint: no protobuf message parses from it


@pytest.mark.parametrize("kind", ["aio-deep", "aio-deep-raw"])
def test_floor_server_answers_classify_and_only_the_raw_kind_skips_the_parse(kind: str, tmp_path: Path) -> None:
    server = support.start_floor_server(kind, tmp_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            classify = channel.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None)
            body = pb.ClassifyRequest(model="news", texts=["shares rose", "x" * 70_000]).SerializeToString()
            answer = pb.ClassifyResponse.FromString(classify(body, timeout=10))
            assert answer.model == "floor" and answer.predictions[0].label == "sports"
            if kind == "aio-deep-raw":
                assert pb.ClassifyResponse.FromString(classify(NOT_A_CLASSIFY_REQUEST, timeout=10)).model == "floor"
            else:
                with pytest.raises(grpc.RpcError) as failed:
                    classify(NOT_A_CLASSIFY_REQUEST, timeout=10)
                # grpcio's aio server answers a deserializer's exception with UNKNOWN
                assert failed.value.code() == grpc.StatusCode.UNKNOWN
                assert "Error parsing message" in failed.value.details()
    finally:
        server.stop()
