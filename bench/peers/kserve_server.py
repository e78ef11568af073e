"""The KServe 0.21 Python model server on a textclf bundle (run with the .peers/kserve venv's python).

A ``kserve.Model`` subclass (``load``, async ``predict``) in ``kserve.ModelServer`` with its gRPC v2
server on, as KServe's custom-model docs write one. Tokenization runs on the event loop,
onnxruntime in ``asyncio.to_thread`` (the same split as the MLServer runtime). The Python server
has no batcher: KServe batches in its Kubernetes sidecar, which is not part of this process.

For a fair run: the per-call INFO line of KServe's gRPC logging interceptor and the per-request
latency log line are off (``--enable_latency_logging false``, kserve loggers at WARNING); this
favours KServe. KServe binds 0.0.0.0 / [::] itself; the two listeners are pointed at 127.0.0.1
here (loopback only, as every server of this benchmark).
"""
from __future__ import annotations

import asyncio
import logging
import sys
import types
import uuid
from pathlib import Path

import kserve
import kserve.protocol.grpc.server as kserve_grpc_server
import kserve.protocol.rest.server as kserve_rest_server
from kserve import InferOutput, InferRequest, InferResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import BundleModel, decode_texts  # noqa: E402
from launch_args import launcher_parser  # noqa: E402

LOOPBACK = "127.0.0.1"


class TextclfModel(kserve.Model):
    def __init__(self, name: str, bundle_dir: str) -> None:
        super().__init__(name)
        self.bundle_dir = bundle_dir
        self.model: BundleModel | None = None
        self.load()

    def load(self) -> bool:
        self.model = BundleModel(self.bundle_dir)
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        assert self.model is not None
        texts = decode_texts(payload.inputs[0].as_numpy())
        input_ids, lengths = self.model.encode(texts)
        probabilities = await asyncio.to_thread(self.model.infer, input_ids, lengths)
        labels = self.model.labels_of(probabilities)
        outputs = [InferOutput("PROBABILITIES", list(probabilities.shape), "FP32"),
                   InferOutput("LABEL", [len(labels)], "BYTES")]
        outputs[0].set_data_from_numpy(probabilities)
        outputs[1].set_data_from_numpy(labels)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=outputs)


def _module_with(module: types.ModuleType, **overrides) -> types.ModuleType:
    """A copy of ``module`` with some attributes replaced (for one importer's name only)."""
    copy = types.ModuleType(module.__name__)
    copy.__dict__.update(vars(module), **overrides)
    return copy


def _loopback_listeners() -> None:
    """KServe hard-codes ``[::]`` (gRPC) and ``0.0.0.0`` (REST): bind both to 127.0.0.1 instead."""
    aio_server = kserve_grpc_server.aio.server

    def server(*args, **kwargs):
        grpc_server = aio_server(*args, **kwargs)
        add_port = grpc_server.add_insecure_port
        grpc_server.add_insecure_port = lambda address: add_port(address.replace("[::]", LOOPBACK))
        return grpc_server

    kserve_grpc_server.aio = _module_with(kserve_grpc_server.aio, server=server)
    uvicorn_config = kserve_rest_server.uvicorn.Config

    class LoopbackConfig(uvicorn_config):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["host"] = LOOPBACK
            super().__init__(*args, **kwargs)

    kserve_rest_server.uvicorn = _module_with(kserve_rest_server.uvicorn, Config=LoopbackConfig)


def main() -> None:
    p = launcher_parser(__doc__)
    args = p.parse_args()
    _loopback_listeners()
    model = TextclfModel(args.model, args.bundle)
    server = kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, enable_grpc=True,
                                enable_latency_logging=False)
    # after ModelServer() configured KServe's logging: its loggers at WARNING (no line per call)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])

if __name__ == "__main__":
    main()
