"""KServe v2 / Open Inference Protocol over HTTP/REST (docs/rest.md), on its own port (``rest_port``).

Thin, like the gRPC servicer: JSON (and Triton's binary tensor extension, which
``tritonclient.http`` uses by default) -> a ``ModelInferRequest`` -> the same strict decoding as
gRPC (``kserve_codec.decode_request``) -> ``ClassifyRequest`` -> ``core.classify`` -> JSON. Errors
get the gRPC status the gRPC API would give, mapped to an HTTP status (``HTTP_STATUS``), a body
``{"error": message}``, and the request metric under ``api="rest.<Method>"``.

Routes (``{v}`` optional everywhere as ``/versions/{v}``):

    GET  /v2/health/live            GET /v2/health/ready          GET /v2
    GET  /v2/models/{m}             GET /v2/models/{m}/ready      POST /v2/models/{m}/infer
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.api import kserve_codec as codec
from service.api.boundary import CallInfo, record, status_of
from service.api.http11 import HTTPServer, Request, Response, json_error
from service.api.kserve import EXTENSIONS, SERVER_NAME, server_version
from service.api.kserve_config import PLATFORM
from service.core import InferenceCore
from service.errors import InvalidArgument, NotFound
from service.types import ClassifyRequest
from textclf_protos.inference import grpc_service_pb2 as pb

API = "rest"
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
CODE_OF_HTTP = {413: grpc.StatusCode.RESOURCE_EXHAUSTED, 404: grpc.StatusCode.NOT_FOUND,
                405: grpc.StatusCode.UNIMPLEMENTED}
HEADER_LENGTH = "inference-header-content-length"
_MODEL_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")
_PARAM_FIELD = {bool: "bool_param", int: "int64_param", str: "string_param", float: "double_param"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode())


# ------------------------------------------------------------------------ JSON -> ModelInferRequest

def _parameters(target: Any, params: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise InvalidArgument(f"{where} parameters must be a JSON object")
    for key, value in params.items():
        if key in skip:
            continue
        kind = _PARAM_FIELD.get(type(value))
        if kind is None:
            raise InvalidArgument(f"{where} parameter {codec.show(key)} must be a bool, number or string")
        try:
            setattr(target[key], kind, value)
        except (ValueError, TypeError):  # an integer beyond int64
            raise InvalidArgument(f"{where} parameter {codec.show(key)} is out of range") from None


def _text_data(data: Any, limit: int) -> list[bytes]:
    """A TEXT input's JSON ``data``: a flat list of strings, or one string per row ([N, 1])."""
    if not isinstance(data, list):
        raise InvalidArgument(f"input {codec.TEXT_INPUT!r} data must be a JSON array of strings")
    if len(data) > limit:
        raise InvalidArgument(f"too many texts: {len(data)} > {limit} per request")
    items = []
    for index, element in enumerate(data):
        if isinstance(element, list) and len(element) == 1:
            element = element[0]
        if not isinstance(element, str):
            raise InvalidArgument(f"input {codec.TEXT_INPUT!r} element {index} is not a string")
        try:
            items.append(element.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"input {codec.TEXT_INPUT!r} element {index} is not valid UTF-8 "
                                  "(a lone surrogate escape)") from None
    return items


def _declared_count(shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and -2**63 <= d < 2**63
                                              for d in shape):
        raise InvalidArgument("an input's shape must be a JSON array of 64-bit integers")
    count = 1
    for dim in shape:
        count *= max(dim, 0)
    return count


# A KServe infer body holds a few dozen numbers, objects and strings besides its texts (shape,
# parameters, outputs, keys). Beyond these counts it is refused: strings from a count of its quote
# bytes before decoding, numbers and objects as decoding meets them, so a body of millions of
# values costs no more than a few thousand (bench/rest_worst_bodies.py).
MAX_JSON_NUMBERS = 4096
MAX_JSON_OBJECTS = 1024
MAX_JSON_STRINGS_BESIDES_TEXTS = 4096


class _TooManyValues(ValueError):
    pass


def _bounded_json(text: bytes, max_texts: int) -> Any:
    """``json.loads`` that refuses more than ``max_texts`` + MAX_JSON_STRINGS_BESIDES_TEXTS strings
    before decoding, and gives up after MAX_JSON_NUMBERS numbers or MAX_JSON_OBJECTS objects."""
    # every string has two unescaped quotes; counting `\"` as escaped can only undercount them
    # (a text ending in a backslash), so this never refuses a body that has few enough strings
    limit = max_texts + MAX_JSON_STRINGS_BESIDES_TEXTS
    strings = text.count(b'"') // 2
    if strings > limit and (strings := (text.count(b'"') - text.count(b'\\"')) // 2) > limit:
        raise InvalidArgument(f"the request body has {strings} strings or more; an infer request has at most "
                              f"{max_texts} texts and a few dozen other strings")
    numbers = objects = 0

    def number(kind: type) -> Callable[[str], Any]:
        def parse(literal: str) -> Any:
            nonlocal numbers
            numbers += 1
            if numbers > MAX_JSON_NUMBERS:
                raise _TooManyValues(f"more than {MAX_JSON_NUMBERS} numbers")
            return kind(literal)
        return parse

    def obj(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > MAX_JSON_OBJECTS:
            raise _TooManyValues(f"more than {MAX_JSON_OBJECTS} objects")
        return dict(pairs)

    try:
        return json.loads(text, parse_int=number(int), parse_float=number(float), object_pairs_hook=obj)
    except _TooManyValues as exc:
        raise InvalidArgument(f"the request body has {exc}; an infer request needs a few dozen") from None


def infer_request(body: bytes, header_length: int | None, name: str, version: str,
                  max_texts: int) -> tuple[pb.ModelInferRequest, dict[str, bool], bool]:
    """The ModelInferRequest a REST infer body stands for, the per-output binary choices and the
    request's default (``binary_data_output``). Counts are checked from the declared shape before
    any element is converted."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidArgument(f"Inference-Header-Content-Length {header_length} is outside the body "
                              f"of {len(body)} bytes")
    split = len(body) if header_length is None else header_length
    try:
        doc = _bounded_json(body[:split], max_texts)
    except (ValueError, RecursionError):
        raise InvalidArgument("the request body is not valid JSON (or nested too deeply)") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body must be a JSON object")
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id must be a string")
    request.id = request_id
    params = doc.get("parameters") or {}
    _parameters(request.parameters, params, "request")
    default_binary = params.get(codec.PARAM_BINARY_OUTPUT, False) is True
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("inputs must be a JSON array")
    binary, offset = body[split:], 0
    for item in inputs[:4]:  # more than one input is refused by the codec, which names a few
        if not isinstance(item, dict):
            raise InvalidArgument("each input must be a JSON object")
        tensor = request.inputs.add(name=str(item.get("name", ""))[:256], datatype=str(item.get("datatype", ""))[:64])
        shape = item.get("shape", [])
        count = _declared_count(shape)
        if count > max_texts:
            raise InvalidArgument(f"too many texts: {count} > {max_texts} per request")
        tensor.shape.extend(shape)
        input_params = item.get("parameters") or {}
        _parameters(tensor.parameters, input_params, f"input {codec.show(tensor.name)}", skip=("binary_data_size",))
        size = input_params.get("binary_data_size") if isinstance(input_params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
                raise InvalidArgument(f"input {codec.show(tensor.name)} binary_data_size {size!r} does not fit "
                                      f"the {len(binary) - offset} bytes of binary data left")
            request.raw_input_contents.append(binary[offset:offset + size])
            offset += size
        elif "data" in item:
            tensor.contents.bytes_contents.extend(_text_data(item["data"], max_texts))
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data after the inputs that declare it")
    if len(inputs) > 4:
        request.inputs.add()  # the codec answers "expected exactly one input"
    binary_outputs: dict[str, bool] = {}
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidArgument("outputs must be a JSON array")
    for item in outputs[:8]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each requested output must be a JSON object with a name")
        output = request.outputs.add(name=item["name"][:256])
        output_params = item.get("parameters") or {}
        _parameters(output.parameters, output_params, f"output {codec.show(output.name)}")
        binary_outputs[output.name] = output_params.get(codec.OUTPUT_PARAM_BINARY, default_binary) is True
    return request, binary_outputs, default_binary


def infer_response(decoded: codec.InferInput, result: Any, binary_outputs: dict[str, bool],
                   default_binary: bool) -> Response:
    """The JSON answer; outputs asked for in binary follow the JSON header (Triton's extension)."""
    outputs, tail = [], []
    for name, datatype, shape, data in codec.output_tensors(decoded, result):
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary_outputs.get(name, default_binary):
            raw = data.tobytes() if datatype == codec.FP32 else codec.encode_bytes_raw(data)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif datatype == codec.FP32:
            tensor["data"] = data.ravel().tolist()
        else:
            tensor["data"] = [item.decode("utf-8") for item in data]
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": result.model_name, "model_version": str(result.model_version),
                              "outputs": outputs}
    if decoded.request_id:
        answer["id"] = decoded.request_id
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not tail:
        return Response(200, head)
    return Response(200, head + b"".join(tail), content_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


# ------------------------------------------------------------------------ routes

class RestAPI:
    """The request handler of the REST port: routing, the API boundary (metric, status, span)."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self._version = server_version()

    def refused(self, request: Request | None, response: Response) -> None:
        """Requests the HTTP layer answered itself (oversized, malformed): counted like any other."""
        code = CODE_OF_HTTP.get(response.status, grpc.StatusCode.INVALID_ARGUMENT)
        call = self._route(request)[1] if request is not None else CallInfo(f"{API}.Unparsed")
        record(self.core.metrics, call, code, 0.0)

    async def handle(self, request: Request) -> Response:
        method, call = self._route(request)
        start = time.perf_counter()
        tracer = self.core.tracer
        traced = None if tracer is None else tracer.begin(call.api, request.headers.items())  # TRACING HOOK
        self.core.call_started()
        code, message = grpc.StatusCode.OK, ""
        try:
            response = await method(request, call)
        except Exception as exc:  # noqa: BLE001 - the boundary maps everything
            code, message = status_of(exc)
            if isinstance(exc, _MethodNotAllowed):
                code, response = grpc.StatusCode.UNIMPLEMENTED, json_error(405, message)
            else:
                response = json_error(HTTP_STATUS.get(code, 500), message)
        finally:
            self.core.call_finished(close=True)
        record(self.core.metrics, call, code, time.perf_counter() - start)
        if traced is not None:
            tracer.end(traced, call.model, call.version, code.name, message, http_status=response.status)
        return response

    def _route(self, request: Request) -> tuple[Callable[[Request, CallInfo], Awaitable[Response]], CallInfo]:
        path = request.path.rstrip("/") or "/"
        get_routes = {"/v2/health/live": ("ServerLive", self.server_live),
                      "/v2/health/ready": ("ServerReady", self.server_ready),
                      "/v2": ("ServerMetadata", self.server_metadata)}
        if path in get_routes:
            name, method = get_routes[path]
            return self._only(request, "GET", method), CallInfo(f"{API}.{name}")
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            return self.not_found, CallInfo(f"{API}.Unknown")
        action = match.group("action")
        name, method, verb = {None: ("ModelMetadata", self.model_metadata, "GET"),
                              "/ready": ("ModelReady", self.model_ready, "GET"),
                              "/infer": ("ModelInfer", self.model_infer, "POST")}[action]
        call = CallInfo(f"{API}.{name}")
        request.route = {"model": match.group("name"), "version": match.group("version") or ""}
        return self._only(request, verb, method), call

    @staticmethod
    def _only(request: Request, verb: str, method: Callable[[Request, CallInfo], Awaitable[Response]]):
        allowed = (verb, "HEAD") if verb == "GET" else (verb,)
        if request.method in allowed:
            return method

        async def not_allowed(request: Request, call: CallInfo) -> Response:
            raise _MethodNotAllowed(f"method {request.method[:16]} not allowed here; use {verb}")

        return not_allowed

    async def not_found(self, request: Request, call: CallInfo) -> Response:
        raise NotFound(f"no such endpoint: {codec.show(request.path)} (KServe v2: /v2/health/live, /v2/health/ready, "
                       "/v2, /v2/models/<name>[/versions/<v>][/ready|/infer])")

    # -- health and metadata ---------------------------------------------------------------
    async def server_live(self, request: Request, call: CallInfo) -> Response:
        live = self.core.live()
        return _json({"live": live}, 200 if live else 503)

    async def server_ready(self, request: Request, call: CallInfo) -> Response:
        ready = self.core.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request, call: CallInfo) -> Response:
        return _json({"name": SERVER_NAME, "version": self._version, "extensions": list(EXTENSIONS)})

    def _model(self, request: Request, call: CallInfo):
        name = codec.require_model_name(request.route["model"])
        model = self.core.get_model(name, codec.parse_version(request.route["version"]))
        call.resolved(model.name, model.version)
        return model

    async def model_ready(self, request: Request, call: CallInfo) -> Response:
        model = self._model(request, call)
        ready = self.core.ready()
        return _json({"name": model.name, "ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request: Request, call: CallInfo) -> Response:
        model = self._model(request, call)
        inputs, outputs = codec.tensor_layout(len(model.labels))
        return _json({"name": model.name, "versions": [str(v) for v in self.core.model_versions(model.name)],
                      "platform": PLATFORM,
                      "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
                      "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs]})

    # -- inference -------------------------------------------------------------------------
    async def model_infer(self, request: Request, call: CallInfo) -> Response:
        raw_length = request.headers.get(HEADER_LENGTH)
        if raw_length is not None and not raw_length.isdigit():
            raise InvalidArgument("Inference-Header-Content-Length must be a non-negative integer")
        max_texts = self.core.settings.max_texts_per_request
        message, binary_outputs, default_binary = infer_request(
            request.body, None if raw_length is None else int(raw_length), request.route["model"],
            request.route["version"], max_texts)
        decoded = codec.decode_request(message, max_texts=max_texts)
        deadline = None if decoded.timeout_s is None else time.monotonic() + decoded.timeout_s
        classify = ClassifyRequest(model=decoded.model_name, version=decoded.version, texts=decoded.texts,
                                   deadline=deadline)
        model = self.core.resolve(classify)
        call.resolved(model.name, model.version)
        result = await self.core.classify(model, classify)
        call.resolved(result.model_name, result.model_version)
        return infer_response(decoded, result, binary_outputs, default_binary)


class _MethodNotAllowed(InvalidArgument):
    pass


def build_server(core: InferenceCore) -> HTTPServer:
    settings = core.settings
    api = RestAPI(core)
    return HTTPServer(api.handle, max_body=settings.max_receive_message_bytes,
                      max_connections=settings.rest_max_connections, idle_timeout=settings.rest_idle_timeout,
                      refused=api.refused, draining=core.is_draining)
