"""KServe v2 / Open Inference Protocol servicer (``inference.GRPCInferenceService``).

Thin: proto -> ``InferenceCore`` -> proto. Tensor decoding and encoding live in
``service/api/kserve_codec.py``; errors go through the shared boundary in
``service/api/boundary.py``. See docs/kserve.md for how clients call it.
"""
from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator

import grpc

from service.api import kserve_codec as codec
from service.api.boundary import CallInfo, add_servicer, answer_in_stream, deadline_of, stream, unary
from service.api.streams import ordered_concurrently
from service.api.kserve_config import PLATFORM, model_config
from service.api.kserve_stats import statistics_message
from service.core import InferenceCore
from service.errors import InvalidArgument, NotFound
from service.types import ClassifyRequest, LoadedModel
from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc

logger = logging.getLogger(__name__)

API = "kserve"  # metric label prefix: "kserve.<Method>"; stream messages: "kserve.ModelStreamInfer.message"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "textclf"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "classification")


def server_version() -> str:
    try:
        return importlib.metadata.version("textclf")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _single_repository(name: str) -> None:
    if name:
        raise InvalidArgument(
            f"unknown repository {codec.show(name)}: this server has one model repository; leave repository_name empty")


def _earliest(*deadlines: float | None) -> float | None:
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self._version = server_version()

    # -- health ----------------------------------------------------------------------------
    @unary(f"{API}.ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context, call: CallInfo) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.live())

    @unary(f"{API}.ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context, call: CallInfo) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready())

    @unary(f"{API}.ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context, call: CallInfo) -> pb.ModelReadyResponse:
        name, version = codec.require_model_name(request.name), codec.parse_version(request.version)
        try:
            model = self.core.get_model(name, version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        call.resolved(model.name, model.version)
        return pb.ModelReadyResponse(ready=self.core.ready())

    # -- metadata --------------------------------------------------------------------------
    @unary(f"{API}.ServerMetadata")
    async def ServerMetadata(self, request, context, call: CallInfo) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)

    @unary(f"{API}.ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context, call: CallInfo) -> pb.ModelMetadataResponse:
        model = self._model(request.name, request.version, call)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        inputs, outputs = codec.tensor_layout(len(model.labels))
        return pb.ModelMetadataResponse(
            name=model.name, platform=PLATFORM,
            versions=[str(v) for v in self.core.model_versions(model.name)],
            inputs=[tensor(name=name, datatype=datatype, shape=shape) for name, datatype, shape in inputs],
            outputs=[tensor(name=name, datatype=datatype, shape=shape) for name, datatype, shape in outputs])

    @unary(f"{API}.ModelConfig")
    async def ModelConfig(self, request: pb.ModelConfigRequest, context, call: CallInfo) -> pb.ModelConfigResponse:
        model = self._model(request.name, request.version, call)
        return pb.ModelConfigResponse(config=model_config(model, self.core.settings))

    def _model(self, name: str, version: str, call: CallInfo) -> LoadedModel:
        model = self.core.get_model(codec.require_model_name(name), codec.parse_version(version))
        call.resolved(model.name, model.version)
        return model

    # -- inference -------------------------------------------------------------------------
    @unary(f"{API}.ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context, call: CallInfo) -> pb.ModelInferResponse:
        return await self._infer(request, deadline_of(context), call)

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None,
                     call: CallInfo) -> pb.ModelInferResponse:
        decoded = codec.decode_request(request, max_texts=self.core.settings.max_texts_per_request)
        timeout = None if decoded.timeout_s is None else time.monotonic() + decoded.timeout_s
        classify = ClassifyRequest(model=decoded.model_name, version=decoded.version, texts=decoded.texts,
                                   deadline=_earliest(deadline, timeout))
        model = self.core.resolve(classify)
        call.resolved(model.name, model.version)
        result = await self.core.classify(model, classify)
        call.resolved(result.model_name, result.model_version)
        return codec.encode_response(decoded, result)

    @stream(f"{API}.ModelStreamInfer")
    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context,
                               call: CallInfo) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are answered concurrently (at most ``stream_max_in_flight`` at once) and in
        request order. A failed request yields a response with ``error_message`` (and its ``id``
        in ``infer_response``), as Triton does; the stream goes on."""
        deadline = deadline_of(context)
        async for response in ordered_concurrently(requests, lambda message: self._stream_one(message, deadline),
                                                   self.core.settings.stream_max_in_flight):
            yield response

    async def _stream_one(self, message: pb.ModelInferRequest, deadline: float | None) -> pb.ModelStreamInferResponse:
        async def infer(call: CallInfo) -> pb.ModelStreamInferResponse:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(message, deadline, call))

        return await answer_in_stream(
            self.core.metrics, f"{API}.ModelStreamInfer.message", infer,
            lambda code, text: pb.ModelStreamInferResponse(error_message=text,
                                                           infer_response=pb.ModelInferResponse(id=message.id)),
            tracer=self.core.tracer)

    @unary(f"{API}.ModelStatistics")
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context,
                              call: CallInfo) -> pb.ModelStatisticsResponse:
        models = self.core.list_models()
        if request.name:
            model = self._model(request.name, request.version, call)
            models = [m for m in models if m.name == model.name and (not request.version or m.version == model.version)]
        elif request.version:
            raise InvalidArgument("a version needs a model name")
        return pb.ModelStatisticsResponse(model_stats=[
            statistics_message(m.name, m.version, self.core.statistics.snapshot(m.name, m.version)) for m in models])

    # -- model repository ------------------------------------------------------------------
    @unary(f"{API}.RepositoryIndex")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context,
                              call: CallInfo) -> pb.RepositoryIndexResponse:
        _single_repository(request.repository_name)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            entry(name=s.name, version=str(s.version), state=s.state, reason=s.reason)
            for s in self.core.repository_index() if not request.ready or s.state == "READY"])

    @unary(f"{API}.RepositoryModelLoad", control=True)  # token checked before the request is parsed
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context,
                                  call: CallInfo) -> pb.RepositoryModelLoadResponse:
        name = self._repository_request(request)
        await self.core.load_model(name)
        call.resolved(name, None)
        return pb.RepositoryModelLoadResponse()

    @unary(f"{API}.RepositoryModelUnload", control=True)
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context,
                                    call: CallInfo) -> pb.RepositoryModelUnloadResponse:
        # tritonclient always sends `unload_dependents`; our models have no dependents
        name = self._repository_request(request, accepted=("unload_dependents",))
        await self.core.unload_model(name)
        call.resolved(name, None)
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    def _repository_request(request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
                            accepted: tuple[str, ...] = ()) -> str:
        _single_repository(request.repository_name)
        for key, value in request.parameters.items():
            if key not in accepted:
                raise InvalidArgument(
                    f"parameter {codec.show(key)} is not supported: models load from their bundles in the "
                    "repository only (no config override, no file upload)")
            if value.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidArgument(f"parameter {codec.show(key)} must be a bool_param")
        return codec.require_model_name(request.model_name)


def register(server: grpc.aio.Server, core: InferenceCore) -> str:
    """Add the KServe v2 servicer to ``server``; returns its service name (for health/reflection)."""
    add_servicer(grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, KServeServicer(core), server)
    return SERVICE_NAME
