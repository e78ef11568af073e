"""textclf.v1 messages <-> core values: pure functions, no I/O."""
from __future__ import annotations

import json
from typing import Any

from google.protobuf import struct_pb2

from service.errors import InvalidArgument
from service.types import Classification, ClassifyRequest, LoadedModel
from textclf_protos.textclf.v1 import textclf_pb2 as pb

DEFAULT_TOP_K = 1


def model_name_of(name: str) -> str:
    if not name:
        raise InvalidArgument("model is required")
    return name


def version_of(message: Any) -> int | None:
    """The optional ``version`` field: absent -> None (default version); present must be >= 1."""
    if not message.HasField("version"):
        return None
    if message.version < 1:
        raise InvalidArgument(f"version must be >= 1, got {message.version}")
    return int(message.version)


def classify_request(request: pb.ClassifyRequest, deadline: float | None) -> ClassifyRequest:
    """The core's request; the texts stay the repeated field (the core checks their count first)."""
    return ClassifyRequest(model=model_name_of(request.model), version=version_of(request), texts=request.texts,
                           deadline=deadline)


def top_k_of(request: pb.ClassifyRequest, num_labels: int) -> int:
    if not request.HasField("top_k"):
        return DEFAULT_TOP_K
    k = request.top_k
    if not 1 <= k <= num_labels:
        raise InvalidArgument(f"top_k must be between 1 and the model's {num_labels} labels, got {k}")
    return int(k)


def classify_response(result: Classification, top_k: int) -> pb.ClassifyResponse:
    k = min(top_k, len(result.labels))
    predictions = []
    for row in range(result.probabilities.shape[0]):
        top = [pb.LabelScore(label=label, probability=p) for label, p in result.top_k(row, k)]
        predictions.append(pb.Prediction(label=top[0].label, probability=top[0].probability, top=top,
                                         truncated=result.truncated[row]))
    return pb.ClassifyResponse(model=result.model_name, version=result.model_version, predictions=predictions)


def _struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if data:
        message.update(json.loads(json.dumps(data, default=str)))
    return message


def model_summary(default: LoadedModel, versions: list[int]) -> pb.ModelSummary:
    return pb.ModelSummary(name=default.name, versions=versions, default_version=max(versions),
                           labels=default.labels)


def model_response(model: LoadedModel, versions: list[int]) -> pb.GetModelResponse:
    card = model.card
    return pb.GetModelResponse(
        name=model.name, version=model.version, versions=versions, default_version=max(versions),
        labels=model.labels, max_len=model.max_len, metrics=_struct(card.metrics),
        architecture=_struct(card.architecture), parity=_struct(card.parity),
        library_versions={str(k): str(v) for k, v in (card.versions or {}).items()},
        quantization=card.quantization, created_at=card.created_at,
    )
