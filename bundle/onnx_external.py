"""Find ONNX tensors stored as external data, reading the protobuf wire format directly.

A bundle's sha256 covers model.onnx only, so weights kept in a separate external-data file would
be loaded unverified (onnxruntime resolves them next to model.onnx, or against the working
directory when it loads from bytes). The service therefore loads only self-contained models, and
this check runs during verification without the ``onnx`` package (the serving side does not
depend on it). It walks every place a TensorProto can live: graph initializers, sparse
initializers, node attributes (also in subgraphs and in model-local functions).
"""
from __future__ import annotations

# field numbers from onnx/onnx.proto (stable across IR versions)
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_FUNCTION_NODE = 7
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1
_MAX_DEPTH = 64


class MalformedOnnx(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedOnnx("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one message; value is an int or a bytes slice."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = 0, pos + 8
        elif wire == 5:
            value, pos = 0, pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise MalformedOnnx(f"unsupported wire type {wire}")
        if pos > len(data):
            raise MalformedOnnx("truncated field")
        yield number, wire, value


def _tensor(data: bytes, found: list[str]) -> None:
    name, external = "", False
    for number, wire, value in _fields(data):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
    if external:
        found.append(name or "<unnamed>")


def _sparse(data: bytes, found: list[str]) -> None:
    for number, wire, value in _fields(data):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and wire == 2:
            _tensor(value, found)


def _node(data: bytes, found: list[str], depth: int) -> None:
    for number, wire, value in _fields(data):
        if number != _NODE_ATTRIBUTE or wire != 2:
            continue
        for a_number, a_wire, a_value in _fields(value):
            if a_wire != 2:
                continue
            if a_number in (_ATTR_T, _ATTR_TENSORS):
                _tensor(a_value, found)
            elif a_number in (_ATTR_G, _ATTR_GRAPHS):
                _graph(a_value, found, depth + 1)
            elif a_number in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(a_value, found)


def _graph(data: bytes, found: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise MalformedOnnx("subgraphs nested too deeply")
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor(value, found)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse(value, found)
        elif number == _GRAPH_NODE:
            _node(value, found, depth)


def external_tensors(model: bytes) -> list[str]:
    """Names of the tensors of an ONNX ModelProto whose data lives outside it (empty = self-contained).
    Raises MalformedOnnx for bytes that are not a protobuf message."""
    data = memoryview(model)
    found: list[str] = []
    for number, wire, value in _fields(data):
        if wire != 2:
            continue
        if number == _MODEL_GRAPH:
            _graph(value, found, 0)
        elif number == _MODEL_FUNCTIONS:
            for f_number, f_wire, f_value in _fields(value):
                if f_number == _FUNCTION_NODE and f_wire == 2:
                    _node(f_value, found, 1)
    return found
