"""KServe v2 tensors <-> textclf texts and answers: pure functions, no I/O, no core.

A textclf model takes one input and gives two outputs:

    TEXT           BYTES [N] (or [N, 1])  UTF-8 texts, in ``contents.bytes_contents`` or in
                                          ``raw_input_contents`` (4-byte little-endian length
                                          prefix per element), never both
    PROBABILITIES  FP32  [N, C]           softmax over the model's labels, in label order
    LABEL          BYTES [N]              the predicted label of each text

Outputs go into ``raw_output_contents`` (what Triton does over gRPC, and the only form
``tritonclient.grpc.InferResult.as_numpy`` reads for FP32) unless the request sets the parameter
``binary_data_output`` to false, in which case they go into each output's typed ``contents``.

Every malformed request raises ``InvalidArgument`` with a message that names the problem and
never echoes request texts; nothing here may raise anything else for client input.
"""
from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import InvalidArgument
from textclf_protos.inference import grpc_service_pb2 as pb

TEXT_INPUT = "TEXT"
PROBABILITIES_OUTPUT = "PROBABILITIES"
LABEL_OUTPUT = "LABEL"
OUTPUT_NAMES: tuple[str, ...] = (PROBABILITIES_OUTPUT, LABEL_OUTPUT)
BYTES = "BYTES"
FP32 = "FP32"


def tensor_layout(num_labels: int) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """The model's tensors as (name, datatype, shape) inputs and outputs, -1 = any size: the one
    description ModelMetadata and ModelConfig both answer."""
    return ([(TEXT_INPUT, BYTES, [-1])],
            [(PROBABILITIES_OUTPUT, FP32, [-1, num_labels]), (LABEL_OUTPUT, BYTES, [-1])])

# Request-level parameters with a meaning here; any other key is accepted and ignored, as Triton
# forwards unknown parameters to the model and ours take none.
PARAM_BINARY_OUTPUT = "binary_data_output"  # bool, default true
PARAM_TIMEOUT = "timeout"  # microseconds; tritonclient's `infer(timeout=...)` sends it
PARAM_PRIORITY = "priority"  # accepted for compatibility; all requests have the same priority
SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")
# Per-output parameters: Triton's classification extension (top-k "score:index:label" strings)
# and the HTTP-style `binary_data` flag (accepted; the request-level flag decides).
OUTPUT_PARAM_CLASSIFICATION = "classification"
OUTPUT_PARAM_BINARY = "binary_data"

_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")
_LENGTH = struct.Struct("<I")
_MAX_SHOWN = 64


class ClassificationLike(Protocol):
    """What ``InferenceCore.classify`` returns (service/core.py ``Classification``)."""

    model_name: str
    model_version: int
    labels: Sequence[str]
    probabilities: np.ndarray  # (N, C) float32
    predicted: Sequence[str]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int = 0  # > 0: top-k classification strings instead of the tensor


@dataclass(frozen=True)
class InferInput:
    """A decoded, validated ModelInferRequest."""

    model_name: str
    version: int | None  # None = the model's default version
    request_id: str
    texts: list[str]
    outputs: tuple[RequestedOutput, ...]
    binary_output: bool
    timeout_s: float | None  # from the `timeout` parameter; None = no request-level timeout


def show(value: str | bytes) -> str:
    """A client-supplied name, quoted and cut short, safe to put in an error message."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return repr(text)


def parse_version(version: str) -> int | None:
    """"" -> None (the default version), "3" -> 3; anything else is INVALID_ARGUMENT."""
    if version == "":
        return None
    if _VERSION_RE.fullmatch(version) is None:
        raise InvalidArgument(
            f"model version must be empty (the default version) or a positive integer, got {show(version)}")
    return int(version)


def require_model_name(name: str) -> str:
    if not name:
        raise InvalidArgument("model name is required")
    return name


# ------------------------------------------------------------------------ BYTES tensors

def encode_bytes_raw(items: Sequence[bytes]) -> bytes:
    """Serialize BYTES elements the KServe/Triton way: 4-byte LE length, then the bytes."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def decode_bytes_raw(raw: bytes, count: int, *, tensor: str = TEXT_INPUT) -> list[bytes]:
    """Split raw BYTES tensor data into exactly ``count`` elements; strict about every byte."""
    if count > len(raw) // _LENGTH.size:
        raise InvalidArgument(
            f"raw contents of input {show(tensor)} hold {len(raw)} bytes, too few for the "
            f"{count} elements its shape declares")
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise InvalidArgument(
                f"raw contents of input {show(tensor)} are truncated: element {index} has no length prefix "
                f"(shape declares {count} elements)")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise InvalidArgument(
                f"raw contents of input {show(tensor)} are truncated: element {index} declares {size} bytes, "
                f"{len(raw) - offset} remain")
        items.append(bytes(view[offset:offset + size]))
        offset += size
    if offset != len(raw):
        raise InvalidArgument(
            f"raw contents of input {show(tensor)} have {len(raw) - offset} bytes after the "
            f"{count} elements its shape declares")
    return items


def _utf8(items: Sequence[bytes], tensor: str) -> list[str]:
    texts = []
    for index, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"input {show(tensor)} element {index} is not valid UTF-8 (byte {exc.start})") from None
    return texts


# ------------------------------------------------------------------------ parameters

_PARAM_KIND = {"bool_param": "bool", "int64_param": "int64", "string_param": "string",
               "double_param": "double", "uint64_param": "uint64"}


def _kind(param: pb.InferParameter) -> str:
    choice = param.WhichOneof("parameter_choice")
    return _PARAM_KIND.get(choice, "unset") if choice else "unset"


def _bool_param(where: str, key: str, param: pb.InferParameter) -> bool:
    if _kind(param) != "bool":
        raise InvalidArgument(f"{where} parameter {show(key)} must be a bool_param, got {_kind(param)}")
    return param.bool_param


def _nonnegative_int_param(where: str, key: str, param: pb.InferParameter) -> int:
    kind = _kind(param)
    if kind == "int64":
        value = param.int64_param
    elif kind == "uint64":
        value = param.uint64_param
    else:
        raise InvalidArgument(f"{where} parameter {show(key)} must be an int64_param or uint64_param, got {kind}")
    if value < 0:
        raise InvalidArgument(f"{where} parameter {show(key)} must not be negative, got {value}")
    return value


def _request_parameters(params: Mapping[str, pb.InferParameter]) -> tuple[bool, float | None]:
    binary_output, timeout_s = True, None
    for key in SEQUENCE_PARAMS:
        if key in params:
            raise InvalidArgument(
                f"request parameter {show(key)} is not supported: textclf models are stateless, not sequence models")
    if PARAM_BINARY_OUTPUT in params:
        binary_output = _bool_param("request", PARAM_BINARY_OUTPUT, params[PARAM_BINARY_OUTPUT])
    if PARAM_TIMEOUT in params:
        micros = _nonnegative_int_param("request", PARAM_TIMEOUT, params[PARAM_TIMEOUT])
        timeout_s = micros / 1e6 if micros > 0 else None
    if PARAM_PRIORITY in params:
        _nonnegative_int_param("request", PARAM_PRIORITY, params[PARAM_PRIORITY])
    return binary_output, timeout_s


def _requested_outputs(
        outputs: Sequence[pb.ModelInferRequest.InferRequestedOutputTensor]) -> tuple[RequestedOutput, ...]:
    if not outputs:
        return tuple(RequestedOutput(name) for name in OUTPUT_NAMES)
    seen: set[str] = set()
    decoded = []
    for output in outputs:
        if output.name not in OUTPUT_NAMES:
            raise InvalidArgument(
                f"unknown requested output {show(output.name)}; this model has outputs {', '.join(OUTPUT_NAMES)}")
        if output.name in seen:
            raise InvalidArgument(f"output {show(output.name)} is requested twice")
        seen.add(output.name)
        classification = 0
        for key, param in output.parameters.items():
            where = f"output {show(output.name)}"
            if key == OUTPUT_PARAM_BINARY:
                _bool_param(where, key, param)
            elif key == OUTPUT_PARAM_CLASSIFICATION:
                classification = _nonnegative_int_param(where, key, param)
                if output.name != PROBABILITIES_OUTPUT and classification:
                    raise InvalidArgument(
                        f"parameter 'classification' applies to output {PROBABILITIES_OUTPUT!r} only")
            else:
                raise InvalidArgument(
                    f"{where} parameter {show(key)} is not supported (shared memory is not available; "
                    f"supported: {OUTPUT_PARAM_CLASSIFICATION!r}, {OUTPUT_PARAM_BINARY!r})")
        decoded.append(RequestedOutput(output.name, classification))
    return tuple(decoded)


# ------------------------------------------------------------------------ requests

def _text_count(shape: Sequence[int]) -> int:
    dims = list(shape)
    if len(dims) not in (1, 2) or (len(dims) == 2 and dims[1] != 1):
        raise InvalidArgument(f"input {TEXT_INPUT!r} must have shape [N] or [N, 1], got {dims}")
    if dims[0] < 0:
        raise InvalidArgument(f"input {TEXT_INPUT!r} has a negative dimension in shape {dims}")
    return dims[0]


def _contents_in_use(contents: pb.InferTensorContents) -> list[str]:
    return [field.name for field, _ in contents.ListFields()]


def decode_texts(request: pb.ModelInferRequest, max_texts: int) -> list[str]:
    """The texts of a ModelInferRequest's single ``TEXT`` input, strictly validated. The count is
    checked against ``max_texts`` from the declared shape before any element is decoded."""
    if len(request.inputs) != 1:
        names = ", ".join(show(t.name) for t in request.inputs[:4]) or "none"
        raise InvalidArgument(
            f"expected exactly one input, {TEXT_INPUT!r}; got {len(request.inputs)} ({names})")
    tensor = request.inputs[0]
    if tensor.name != TEXT_INPUT:
        raise InvalidArgument(f"unknown input {show(tensor.name)}; this model has one input, {TEXT_INPUT!r}")
    if tensor.datatype != BYTES:
        raise InvalidArgument(f"input {TEXT_INPUT!r} must have datatype {BYTES}, got {show(tensor.datatype)}")
    if tensor.parameters:
        key = next(iter(tensor.parameters))
        raise InvalidArgument(
            f"input parameter {show(key)} is not supported (inputs take no parameters; no shared memory)")
    count = _text_count(tensor.shape)
    if count > max_texts:
        raise InvalidArgument(f"too many texts: {count} > {max_texts} per request")
    used = _contents_in_use(tensor.contents)
    wrong = [name for name in used if name != "bytes_contents"]
    if wrong:
        raise InvalidArgument(
            f"input {TEXT_INPUT!r} is {BYTES}: its data goes in contents.bytes_contents, not {', '.join(wrong)}")
    raw = request.raw_input_contents
    if raw and used:
        raise InvalidArgument(
            f"input {TEXT_INPUT!r} has data in both contents and raw_input_contents; use one")
    if raw:
        if len(raw) != 1:
            raise InvalidArgument(f"raw_input_contents must have one entry per input (1), got {len(raw)}")
        items = decode_bytes_raw(raw[0], count)
    else:
        elements = len(tensor.contents.bytes_contents)
        if elements != count:
            raise InvalidArgument(
                f"input {TEXT_INPUT!r} has shape {list(tensor.shape)} ({count} elements) "
                f"but {elements} elements of data")
        items = list(tensor.contents.bytes_contents)
    return _utf8(items, TEXT_INPUT)


def decode_request(request: pb.ModelInferRequest, *, max_texts: int) -> InferInput:
    """Validate a whole ModelInferRequest: model, version, parameters, input and outputs."""
    name = require_model_name(request.model_name)
    version = parse_version(request.model_version)
    binary_output, timeout_s = _request_parameters(request.parameters)
    outputs = _requested_outputs(request.outputs)
    texts = decode_texts(request, max_texts)
    return InferInput(model_name=name, version=version, request_id=request.id, texts=texts,
                      outputs=outputs, binary_output=binary_output, timeout_s=timeout_s)


# ------------------------------------------------------------------------ responses

def _classification_strings(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[bytes]:
    """Triton's classification extension: per text the top k as "score:index:label", best first."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [f"{probabilities[row, col]:f}:{col}:{labels[col]}".encode()
            for row in range(probabilities.shape[0]) for col in order[row]]


def output_tensors(decoded: InferInput,
                   result: ClassificationLike) -> Iterator[tuple[str, str, list[int], np.ndarray | list[bytes]]]:
    """The requested outputs of ``result`` as (name, datatype, shape, data): FP32 data a
    little-endian float32 array, BYTES data a list of bytes. Shared by gRPC and REST."""
    probabilities = np.ascontiguousarray(result.probabilities, dtype="<f4")
    n = probabilities.shape[0]
    for requested in decoded.outputs:
        if requested.name == PROBABILITIES_OUTPUT and requested.classification:
            items = _classification_strings(probabilities, result.labels, requested.classification)
            yield requested.name, BYTES, [n, len(items) // max(n, 1)], items
        elif requested.name == PROBABILITIES_OUTPUT:
            yield requested.name, FP32, list(probabilities.shape), probabilities
        else:
            yield requested.name, BYTES, [n], [label.encode() for label in result.predicted]


def encode_response(decoded: InferInput, result: ClassificationLike) -> pb.ModelInferResponse:
    """A ModelInferResponse with the requested outputs of ``result``, raw or typed."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=str(result.model_version),
                                     id=decoded.request_id)
    for name, datatype, shape, data in output_tensors(decoded, result):
        tensor = response.outputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        if decoded.binary_output:
            response.raw_output_contents.append(
                data.tobytes() if isinstance(data, np.ndarray) else encode_bytes_raw(data))
        elif isinstance(data, np.ndarray):
            tensor.contents.fp32_contents.extend(data.ravel().tolist())
        else:
            tensor.contents.bytes_contents.extend(data)
    return response
