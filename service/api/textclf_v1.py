"""The textclf.v1.TextClassifier servicer: proto -> InferenceCore -> proto, nothing else."""
from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from service.api import textclf_codec as codec
from service.api.boundary import CallInfo, add_servicer, answer_in_stream, deadline_of, stream, unary
from service.api.streams import ordered_concurrently
from service.core import InferenceCore
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TextClassifier"].full_name
API = "textclf.v1"


class TextClassifierServicer(pb_grpc.TextClassifierServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def _classify(self, request: pb.ClassifyRequest, deadline: float | None, call: CallInfo) -> pb.ClassifyResponse:
        classify = codec.classify_request(request, deadline)
        model = self.core.resolve(classify)
        call.resolved(model.name, model.version)
        top_k = codec.top_k_of(request, len(model.labels))
        result = await self.core.classify(model, classify)
        call.resolved(result.model_name, result.model_version)
        return codec.classify_response(result, top_k)

    @unary(f"{API}.Classify")
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext,
                       call: CallInfo) -> pb.ClassifyResponse:
        return await self._classify(request, deadline_of(context), call)

    @stream(f"{API}.ClassifyStream")
    async def ClassifyStream(self, requests: AsyncIterator[pb.ClassifyStreamRequest],
                             context: grpc.aio.ServicerContext, call: CallInfo) -> AsyncIterator[pb.ClassifyStreamResponse]:
        deadline = deadline_of(context)
        async for response in ordered_concurrently(requests, lambda message: self._stream_one(message, deadline),
                                                   self.core.settings.stream_max_in_flight):
            yield response

    async def _stream_one(self, message: pb.ClassifyStreamRequest, deadline: float | None) -> pb.ClassifyStreamResponse:
        async def classify(call: CallInfo) -> pb.ClassifyStreamResponse:
            return pb.ClassifyStreamResponse(id=message.id, response=await self._classify(message.request, deadline, call))

        return await answer_in_stream(
            self.core.metrics, f"{API}.ClassifyStream.message", classify,
            lambda code, text: pb.ClassifyStreamResponse(id=message.id, error=pb.Error(code=code.value[0], message=text)),
            tracer=self.core.tracer)

    @unary(f"{API}.ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext,
                         call: CallInfo) -> pb.ListModelsResponse:
        models = [codec.model_summary(self.core.get_model(name), self.core.model_versions(name))
                  for name in sorted({m.name for m in self.core.list_models()})]
        return pb.ListModelsResponse(models=models)

    @unary(f"{API}.GetModel")
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext,
                       call: CallInfo) -> pb.GetModelResponse:
        model = self.core.get_model(codec.model_name_of(request.name), codec.version_of(request))
        call.resolved(model.name, model.version)
        return codec.model_response(model, self.core.model_versions(model.name))


def register(server: grpc.aio.Server, core: InferenceCore) -> str:
    add_servicer(pb_grpc.add_TextClassifierServicer_to_server, TextClassifierServicer(core), server)
    return SERVICE_NAME
