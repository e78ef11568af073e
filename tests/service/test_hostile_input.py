"""The most expensive valid requests cost bounded work before and after admission
(docs/reliability.md "Bounded work before admission"): asserted on the work done (characters
handed to the tokenizer), through real servers and clients."""
from __future__ import annotations

import grpc
import pytest

from client.client import TextclfClient
from service.api.kserve_codec import encode_bytes_raw
from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc

# 64 texts of ~64 KiB each: the largest request under the default 4 MiB message limit
TEXTS_PER_REQUEST = 64
HOSTILE = {
    "a-space": "a " * 32000,
    "dots": "." * 64000,
    "nfkc-18x": "\ufdfa" * 21300,  # 3 UTF-8 bytes; NFKC -> 18 characters, 4 words
    "no-space": "x" * 64000,
}


def _count_tokenizer_characters(server) -> list[int]:
    """Hook on the loaded version's real encoder: records how many characters it tokenizes."""
    encoder = server.app.core.get_model("news").runtime.encoder
    seen: list[int] = []
    real = encoder.token_ids

    def counting(texts):
        seen.append(sum(len(t) for t in texts))
        return real(texts)

    encoder.token_ids = counting
    return seen


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_largest_hostile_requests_cost_bounded_tokenizer_work(start_server, bundles, kind: str) -> None:
    server = start_server()
    seen = _count_tokenizer_characters(server)
    budget = server.app.core.get_model("news").runtime.encoder.char_budget
    texts = [HOSTILE[kind]] * TEXTS_PER_REQUEST
    with TextclfClient(server.address, retry=False, timeout=30) as client:
        result = client.classify(texts, "news")
        assert all(p.truncated for p in result.predictions)
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
        request = pb.ModelInferRequest(model_name="news")
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
        request.raw_input_contents.append(encode_bytes_raw([t.encode() for t in texts]))
        answer = stub.ModelInfer(request, timeout=30)
        assert list(answer.outputs[0].shape) == [len(texts), 3]
    # two requests of 64 texts: each text costs at most ~2x the budget, never its 64 KiB
    assert 0 < sum(seen) <= 2 * TEXTS_PER_REQUEST * 2 * budget
    assert sum(seen) < len(HOSTILE[kind]) * TEXTS_PER_REQUEST / 10


def test_a_million_empty_kserve_elements_are_refused_from_the_shape(start_server, bundles) -> None:
    server = start_server()
    count = 1_000_000
    request = pb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(encode_bytes_raw([b""] * count))  # 4 MB of length prefixes
    with TextclfClient(server.address, retry=False, timeout=30) as client:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ModelInfer(request, timeout=30)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"too many texts: {count} > 256" in failure.value.details()
        assert client.classify(["the market rallied"], "news").version == 2


def test_tokenizer_backlog_is_bounded_and_refused_at_once(start_server, bundles) -> None:
    """The tokenizer thread is held (hook on the real encoder) with one large request in it; a
    second large request beyond ``tokenize_max_backlog_texts`` is refused RESOURCE_EXHAUSTED at
    once instead of queueing behind it, small requests (tokenized on the event loop) still pass,
    and the held request is answered once the thread goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.hooks import hold_pool_tokenizer

    server = start_server(tokenize_max_backlog_texts=4)
    entered, release = hold_pool_tokenizer(server.app.core.get_model("news").runtime.encoder)
    large = ["market " * 400] * 4  # over the inline limit: tokenized in the pool
    with TextclfClient(server.address, retry=False, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.classify, large, "news")
        assert entered.wait(10)
        with pytest.raises(grpc.RpcError) as refused:
            client.classify(large[:2], "news")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tokenizer is busy" in refused.value.details()
        assert client.classify(["the market rallied"], "news").version == 2
        release.set()
        assert all(p.truncated for p in first.result(20).predictions)
