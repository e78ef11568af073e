"""Triton's ModelConfig for a loaded model: what ``tritonclient``'s ``get_model_config`` (and
Triton tooling that reads a model's configuration) sees. Pure: values in, message out.

The tensors are ModelMetadata's (``kserve_codec.tensor_layout``): ``max_batch_size`` 0 with the
batch as the tensor's own first dimension (``TEXT`` is BYTES ``[-1]``), because one request
carries any number of texts up to ``max_texts_per_request``. The server's own dynamic batcher (across
requests) is described by ``dynamic_batching``; limits Triton's schema has no field for are
string ``parameters``.
"""
from __future__ import annotations

import json

from bundle.card import MODEL_FILE
from service.api import kserve_codec as codec
from service.runtime import CUDA
from service.settings import Settings
from service.types import LoadedModel
from textclf_protos.inference import grpc_service_pb2 as pb

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
CONFIG_TYPES = {codec.BYTES: pb.TYPE_STRING, codec.FP32: pb.TYPE_FP32}  # KServe datatype -> Triton DataType


def version_policy(settings: Settings) -> pb.ModelVersionPolicy:
    if settings.max_versions > 0:
        return pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=settings.max_versions))
    return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())


def model_config(model: LoadedModel, settings: Settings) -> pb.ModelConfig:
    providers = model.runtime.providers
    inputs, outputs = codec.tensor_layout(len(model.labels))
    config = pb.ModelConfig(
        name=model.name, platform=PLATFORM, backend=BACKEND, version_policy=version_policy(settings),
        max_batch_size=0, default_model_filename=MODEL_FILE,
        input=[pb.ModelInput(name=name, data_type=CONFIG_TYPES[datatype], dims=shape) for name, datatype, shape in inputs],
        output=[pb.ModelOutput(name=name, data_type=CONFIG_TYPES[datatype], dims=shape)
                for name, datatype, shape in outputs],
        instance_group=[pb.ModelInstanceGroup(
            name=f"{model.name}_0", count=settings.inference_workers,
            kind=pb.ModelInstanceGroup.KIND_GPU if CUDA in providers else pb.ModelInstanceGroup.KIND_CPU)],
    )
    if settings.batching:
        config.dynamic_batching.CopyFrom(pb.ModelDynamicBatching(
            preferred_batch_size=[settings.max_batch_size], preserve_ordering=True,
            max_queue_delay_microseconds=round(settings.max_queue_delay_ms * 1000)))
    parameters = {
        "version": str(model.version),
        "labels": json.dumps(model.labels),
        "max_len": str(model.max_len),
        "quantization": model.card.quantization,
        "execution_providers": ",".join(providers),
        "max_texts_per_request": str(settings.max_texts_per_request),
        "max_text_bytes": str(settings.max_text_bytes),
        "length_bucket_ratio": str(settings.length_bucket_ratio),
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config
