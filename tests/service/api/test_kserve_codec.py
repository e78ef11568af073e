"""KServe v2 codec (service/api/kserve_codec.py) and wire compatibility of our .proto with the
descriptors compiled into the real tritonclient. No server here: see test_kserve.py."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from google.protobuf import descriptor as pbd
from tritonclient.grpc import InferResult, service_pb2 as triton_pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.api import kserve_codec as codec
from service.errors import InvalidArgument

MAX_TEXTS = 256  # the default max_texts_per_request
from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc

LABELS = ["business", "sport", "tech"]


@dataclass
class Answer:  # the shape of service.core.Classification, as a plain value
    probabilities: np.ndarray
    model_name: str = "news"
    model_version: int = 2
    labels: list[str] = field(default_factory=lambda: list(LABELS))

    @property
    def predicted(self) -> list[str]:
        return [self.labels[i] for i in self.probabilities.argmax(axis=1)]


def _request(texts: list[str] | None = None, *, raw: bool = True, **fields) -> pb.ModelInferRequest:
    texts = ["hello", "wörld 🙂"] if texts is None else texts
    request = pb.ModelInferRequest(model_name="news", **fields)
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    data = [t.encode() for t in texts]
    if raw:
        request.raw_input_contents.append(codec.encode_bytes_raw(data))
    else:
        tensor.contents.bytes_contents.extend(data)
    return request


def _invalid(request: pb.ModelInferRequest, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        codec.decode_request(request, max_texts=MAX_TEXTS)


# ------------------------------------------------------------------ wire compatibility

def _field_signature(f: pbd.FieldDescriptor) -> tuple:
    return (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None)


def _messages(container) -> list[pbd.Descriptor]:
    found = []
    for message in container.message_types_by_name.values() if hasattr(container, "message_types_by_name") \
            else container.nested_types:
        found.append(message)
        found.extend(_messages(message))
    return found


# Triton's model_config.proto messages, declared as subsets of their fields (the proto's header)
MODEL_CONFIG_SUBSETS = {"inference.ModelConfig", "inference.ModelInput", "inference.ModelOutput",
                        "inference.ModelInstanceGroup", "inference.ModelDynamicBatching"}


def test_every_message_matches_tritonclient_field_for_field() -> None:
    ours = _messages(pb.DESCRIPTOR)
    assert len(ours) >= 40
    for message in ours:
        theirs = triton_pb.DESCRIPTOR.pool.FindMessageTypeByName(message.full_name)
        mine = {f.name: _field_signature(f) for f in message.fields}
        other = {f.name: _field_signature(f) for f in theirs.fields}
        if message.full_name in MODEL_CONFIG_SUBSETS:
            assert mine.items() <= other.items(), message.full_name
        else:
            assert mine == other, message.full_name
        assert message.GetOptions().map_entry == theirs.GetOptions().map_entry, message.full_name
        for enum in message.enum_types:
            assert _values(enum) == _values(theirs.enum_types_by_name[enum.name]), enum.full_name


def _values(enum: pbd.EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def test_enums_match_tritonclient() -> None:
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert _values(enum) == _values(triton_pb.DESCRIPTOR.pool.FindEnumTypeByName(enum.full_name)), enum.full_name
    assert "DataType" in pb.DESCRIPTOR.enum_types_by_name


def test_model_config_subset_parses_as_tritons_full_message() -> None:
    ours = pb.ModelConfig(name="news", platform="onnxruntime_onnx", max_batch_size=0,
                          version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=2)),
                          input=[pb.ModelInput(name="TEXT", data_type=pb.TYPE_STRING, dims=[-1])])
    ours.parameters["labels"].string_value = "a,b"
    theirs = triton_pb.ModelConfigResponse.FromString(pb.ModelConfigResponse(config=ours).SerializeToString()).config
    assert (theirs.name, theirs.platform, theirs.version_policy.latest.num_versions) == ("news", "onnxruntime_onnx", 2)
    assert (theirs.input[0].name, theirs.input[0].data_type, list(theirs.input[0].dims)) == ("TEXT", 13, [-1])
    assert theirs.parameters["labels"].string_value == "a,b"


def test_every_rpc_matches_tritonclient() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService" == theirs.full_name
    required = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                "ModelStreamInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    assert required <= set(service.methods_by_name)
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
               (other.input_type.full_name, other.output_type.full_name)
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceServicer")


def test_our_stubs_live_beside_tritonclient_in_one_process() -> None:
    # Both define `inference.*`; ours sit in a private descriptor pool (scripts/gen_protos.py).
    assert pb.DESCRIPTOR.pool is not triton_pb.DESCRIPTOR.pool
    request = _request(id="r1")
    request.parameters["priority"].uint64_param = 3
    assert pb.ModelInferRequest.FromString(
        triton_pb.ModelInferRequest.FromString(request.SerializeToString()).SerializeToString()) == request


# ------------------------------------------------------------------ decoding

def test_raw_bytes_round_trip_with_tritonclient_serializer() -> None:
    items = [b"", b"a", "ü🙂".encode(), b"\x00\x01" * 300]
    ours = codec.encode_bytes_raw(items)
    assert ours == serialize_byte_tensor(np.array(items, dtype=np.object_)).item()
    assert codec.decode_bytes_raw(ours, len(items)) == items
    assert list(deserialize_bytes_tensor(ours)) == items


@pytest.mark.parametrize("raw", [True, False])
def test_decode_request_raw_and_contents(raw: bool) -> None:
    decoded = codec.decode_request(_request(["a", "", "ƒ 🙂 \u202e"], raw=raw, model_version="7", id="x"), max_texts=MAX_TEXTS)
    assert decoded.texts == ["a", "", "ƒ 🙂 \u202e"]
    assert (decoded.model_name, decoded.version, decoded.request_id) == ("news", 7, "x")
    assert [o.name for o in decoded.outputs] == ["PROBABILITIES", "LABEL"]
    assert decoded.binary_output and decoded.timeout_s is None


def test_shape_n_by_1_is_accepted() -> None:
    request = _request(["a", "b"])
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([2, 1])
    assert codec.decode_request(request, max_texts=MAX_TEXTS).texts == ["a", "b"]


@pytest.mark.parametrize("version,expected", [("", None), ("1", 1), ("42", 42)])
def test_versions(version: str, expected: int | None) -> None:
    assert codec.parse_version(version) == expected


@pytest.mark.parametrize("version", ["0", "-1", "03", "abc", "1.0", " 1", "9" * 30, "v1"])
def test_bad_versions(version: str) -> None:
    with pytest.raises(InvalidArgument, match="positive integer"):
        codec.parse_version(version)


def test_wrong_input_name_count_datatype() -> None:
    request = _request()
    request.inputs[0].name = "INPUT0"
    _invalid(request, "unknown input 'INPUT0'.*'TEXT'")
    request = _request()
    request.inputs.add(name="EXTRA", datatype="BYTES", shape=[1])
    _invalid(request, "exactly one input.*got 2")
    request = pb.ModelInferRequest(model_name="news")
    _invalid(request, "exactly one input.*got 0")
    request = _request()
    request.inputs[0].datatype = "FP32"
    _invalid(request, "datatype BYTES, got 'FP32'")


@pytest.mark.parametrize("shape", [[2, 2], [1, 2, 1], [], [-2], [2, 0]])
def test_bad_shapes(shape: list[int]) -> None:
    request = _request()
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    _invalid(request, "shape|negative")


def test_shape_data_mismatch() -> None:
    request = _request(["a", "b"], raw=False)
    request.inputs[0].shape[0] = 3
    _invalid(request, r"shape \[3\] \(3 elements\) but 2 elements")
    request = _request(["a", "b"])
    request.inputs[0].shape[0] = 1
    _invalid(request, "bytes after the 1 elements")
    request = _request(["a", "b"])
    request.inputs[0].shape[0] = 3
    _invalid(request, "truncated|too few")
    request = _request(["a"])
    request.inputs[0].shape[0] = 10**15
    _invalid(request, "too many texts")


def test_truncated_raw() -> None:
    request = _request(["hello"])
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    _invalid(request, "truncated: element 0 declares 5 bytes, 4 remain")
    request.raw_input_contents[0] = b"\x05\x00\x00\x00hello\x01\x00"
    request.inputs[0].shape[0] = 1
    _invalid(request, "2 bytes after")


def test_both_contents_and_raw_and_wrong_contents() -> None:
    request = _request(["a"])
    request.inputs[0].contents.bytes_contents.append(b"a")
    _invalid(request, "both contents and raw_input_contents")
    request = _request(["a"], raw=False)
    request.inputs[0].contents.fp32_contents.append(1.0)
    _invalid(request, "contents.bytes_contents, not fp32_contents")
    request = _request(["a"])
    request.raw_input_contents.append(b"")
    _invalid(request, "one entry per input")


def test_invalid_utf8_names_the_element_not_the_text() -> None:
    request = pb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(codec.encode_bytes_raw([b"secret ok", b"secret \xff"]))
    with pytest.raises(InvalidArgument) as info:
        codec.decode_request(request, max_texts=MAX_TEXTS)
    assert "element 1 is not valid UTF-8" in info.value.message and "secret" not in info.value.message


def test_model_name_required_and_long_names_are_cut() -> None:
    request = _request()
    request.model_name = ""
    _invalid(request, "model name is required")
    request = _request()
    request.inputs[0].name = "X" * 10_000
    with pytest.raises(InvalidArgument) as info:
        codec.decode_request(request, max_texts=MAX_TEXTS)
    assert len(info.value.message) < 200


def test_requested_outputs() -> None:
    request = _request()
    request.outputs.add(name="LABEL")
    assert [o.name for o in codec.decode_request(request, max_texts=MAX_TEXTS).outputs] == ["LABEL"]
    request.outputs.add(name="LABEL")
    _invalid(request, "requested twice")
    request = _request()
    request.outputs.add(name="LOGITS")
    _invalid(request, "unknown requested output 'LOGITS'")
    request = _request()
    request.outputs.add(name="PROBABILITIES").parameters["classification"].int64_param = 2
    assert codec.decode_request(request, max_texts=MAX_TEXTS).outputs[0].classification == 2
    request = _request()
    request.outputs.add(name="LABEL").parameters["classification"].int64_param = 2
    _invalid(request, "applies to output 'PROBABILITIES' only")
    request = _request()
    request.outputs.add(name="LABEL").parameters["shared_memory_region"].string_param = "r"
    _invalid(request, "'shared_memory_region' is not supported")


def test_parameters_of_the_wrong_type() -> None:
    request = _request()
    request.parameters["binary_data_output"].string_param = "yes"
    _invalid(request, "'binary_data_output' must be a bool_param, got string")
    request = _request()
    request.parameters["timeout"].string_param = "1s"
    _invalid(request, "'timeout' must be an int64_param or uint64_param, got string")
    request = _request()
    request.parameters["timeout"].int64_param = -5
    _invalid(request, "must not be negative")
    request = _request()
    request.parameters["priority"].double_param = 1.5
    _invalid(request, "'priority' must be")
    request = _request()
    request.parameters["timeout"].CopyFrom(pb.InferParameter())
    _invalid(request, "got unset")
    request = _request()
    request.outputs.add(name="LABEL").parameters["classification"].bool_param = True
    _invalid(request, "'classification' must be")
    request = _request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    _invalid(request, "input parameter 'shared_memory_region' is not supported")
    request = _request()
    request.parameters["sequence_id"].int64_param = 4
    _invalid(request, "stateless")


def test_known_parameters_and_custom_ones() -> None:
    request = _request()
    request.parameters["timeout"].int64_param = 250_000
    request.parameters["binary_data_output"].bool_param = False
    request.parameters["my_custom"].string_param = "ignored"
    decoded = codec.decode_request(request, max_texts=MAX_TEXTS)
    assert decoded.timeout_s == pytest.approx(0.25) and decoded.binary_output is False


# ------------------------------------------------------------------ encoding

def _answer() -> Answer:
    return Answer(np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]], dtype=np.float32))


def test_raw_response_reads_back_through_tritonclient_infer_result() -> None:
    decoded = codec.decode_request(_request(id="abc"), max_texts=MAX_TEXTS)
    response = codec.encode_response(decoded, _answer())
    result = InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("PROBABILITIES"), _answer().probabilities)
    assert result.as_numpy("PROBABILITIES").dtype == np.float32
    assert result.as_numpy("LABEL").tolist() == [b"business", b"tech"]
    assert (response.model_name, response.model_version, response.id) == ("news", "2", "abc")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == \
           [("PROBABILITIES", "FP32", [2, 3]), ("LABEL", "BYTES", [2])]


def test_only_requested_outputs_in_request_order() -> None:
    request = _request()
    request.outputs.add(name="LABEL")
    response = codec.encode_response(codec.decode_request(request, max_texts=MAX_TEXTS), _answer())
    assert [o.name for o in response.outputs] == ["LABEL"] and len(response.raw_output_contents) == 1
    result = InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert result.as_numpy("LABEL").tolist() == [b"business", b"tech"]
    assert result.as_numpy("PROBABILITIES") is None


def test_typed_contents_when_binary_output_is_off() -> None:
    request = _request()
    request.parameters["binary_data_output"].bool_param = False
    response = codec.encode_response(codec.decode_request(request, max_texts=MAX_TEXTS), _answer())
    assert not response.raw_output_contents
    probs, label = response.outputs
    assert np.allclose(np.array(probs.contents.fp32_contents).reshape(2, 3), _answer().probabilities)
    assert list(label.contents.bytes_contents) == [b"business", b"tech"]


def test_classification_extension() -> None:
    request = _request()
    request.outputs.add(name="PROBABILITIES").parameters["classification"].int64_param = 2
    response = codec.encode_response(codec.decode_request(request, max_texts=MAX_TEXTS), _answer())
    result = InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert result.as_numpy("PROBABILITIES").tolist() == [
        [b"0.700000:0:business", b"0.200000:1:sport"], [b"0.800000:2:tech", b"0.150000:1:sport"]]


# ------------------------------------------------------------------ fuzzing (bounded; issue 5 extends it)

_shapes = st.lists(st.integers(min_value=-3, max_value=2**62), max_size=3)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), shape=_shapes, datatype=st.sampled_from(["BYTES", "FP32", "", "bytes"]),
       name=st.sampled_from(["TEXT", "text", ""]), version=st.text(max_size=4), raw_count=st.integers(0, 2),
       contents=st.lists(st.binary(max_size=8), max_size=3))
def test_decoding_arbitrary_requests_only_ever_raises_invalid_argument(raw, shape, datatype, name, version,
                                                                        raw_count, contents) -> None:
    request = pb.ModelInferRequest(model_name="news", model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=shape).contents.bytes_contents.extend(contents)
    request.raw_input_contents.extend([raw] * raw_count)
    try:
        decoded = codec.decode_request(request, max_texts=MAX_TEXTS)
    except InvalidArgument as exc:
        assert exc.message
    else:
        assert all(isinstance(t, str) for t in decoded.texts)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.binary(max_size=40), max_size=8), cut=st.integers(0, 400))
def test_raw_decoding_round_trips_or_reports_truncation(items, cut) -> None:
    raw = codec.encode_bytes_raw(items)
    assert codec.decode_bytes_raw(raw, len(items)) == items
    if cut < len(raw):
        with pytest.raises(InvalidArgument):
            codec.decode_bytes_raw(raw[:cut], len(items))


@pytest.mark.parametrize("raw", [True, False])
def test_text_count_is_checked_from_the_shape_before_any_element_is_decoded(raw: bool) -> None:
    """The hostile 4 MiB of ~1M empty elements: refused on the declared count. Every element is
    invalid UTF-8 and the raw data is cut short, so an answer other than "too many texts" would
    mean some element was decoded first."""
    count = 1_048_000
    request = pb.ModelInferRequest(model_name="news")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[count])
    if raw:
        request.raw_input_contents.append(codec.encode_bytes_raw([b"\xff"] * 10)[:-1])
    else:
        tensor.contents.bytes_contents.extend([b"\xff"] * count)
    _invalid(request, f"too many texts: {count} > {MAX_TEXTS}")


def test_raw_elements_beyond_the_declared_count_are_not_decoded() -> None:
    request = pb.ModelInferRequest(model_name="news")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(codec.encode_bytes_raw([b"ok"] + [b""] * 1_000_000))
    _invalid(request, "bytes after the 1 elements")
