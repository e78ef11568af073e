"""The gRPC floor of the serving benchmark: the textclf.v1 API with no model behind it.

    .venv/bin/python bench/grpc_floor_server.py --port 50070 [--kind aio|aio-deep|aio-deep-raw|sync]

``Classify`` parses the request (the generated deserializer, as the real server does) and answers
a fixed one-prediction ``ClassifyResponse`` of the real shape: no tokenization, no batching, no
onnxruntime, no metrics. ``--kind aio`` is the real server's stack (``grpc.aio.server`` with the
same channel options as ``python -m service``) with grpcio's own intake (one call requested from gRPC
core at a time); ``--kind aio-deep`` adds the service's deeper intake (``service/intake.py``, the
default ``grpc_intake_depth``); ``--kind aio-deep-raw`` is ``aio-deep`` whose ``Classify`` takes the
request as bytes and never parses it (what receiving a message costs without the parse);
``--kind sync`` is grpcio's thread-pool server, for comparison. Driven by the same load generator as
the real server, it measures what the Python gRPC stack alone costs on this machine: the highest request rate and the lowest latency any servicer on
that stack can reach, i.e. an upper bound for the served cells (docs/benchmarks.md). Also serves the
standard health service so the benchmark waits for it like for the real server.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from serving_support import serve_sync_until_signal  # noqa: E402
from service.intake import CallIntake  # noqa: E402
from service.server import grpc_server_options  # noqa: E402
from service.settings import Settings  # noqa: E402
from textclf_protos.textclf.v1 import textclf_pb2 as pb  # noqa: E402
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc  # noqa: E402

logger = logging.getLogger("bench.grpc_floor")

KINDS = ("aio", "aio-deep", "aio-deep-raw", "sync")
RESPONSE = pb.ClassifyResponse(
    model="floor", version=1,
    predictions=[pb.Prediction(label="sports", probability=0.97,
                               top=[pb.LabelScore(label="sports", probability=0.97)])])


class AsyncFloorServicer(pb_grpc.TextClassifierServicer):
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        return RESPONSE


class SyncFloorServicer(pb_grpc.TextClassifierServicer):
    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyResponse:
        return RESPONSE


def add_raw_classify(server: grpc.aio.Server) -> None:
    """textclf.v1 Classify taking the request's bytes unparsed, answering the fixed response."""
    answer = RESPONSE.SerializeToString()

    async def classify(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(classify, request_deserializer=None, response_serializer=None)
    server.add_registered_method_handlers("textclf.v1.TextClassifier", {"Classify": handler})


async def serve_aio(port: int, intake_depth: int, raw: bool = False) -> None:
    server = grpc.aio.server(options=grpc_server_options(Settings()))
    intake = CallIntake(server, intake_depth)
    if raw:
        add_raw_classify(server)
    else:
        pb_grpc.add_TextClassifierServicer_to_server(AsyncFloorServicer(), server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    intake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def serve_sync(port: int, threads: int) -> None:
    # one handler thread per in-flight call: a closed loop at concurrency c needs c threads
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(threads), options=grpc_server_options(Settings()))
    pb_grpc.add_TextClassifierServicer_to_server(SyncFloorServicer(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    serve_sync_until_signal(server, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=KINDS, default="aio")
    parser.add_argument("--threads", type=int, default=128, help="handler threads of --kind sync")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.kind.startswith("aio"):
        depth = 1 if args.kind == "aio" else Settings().grpc_intake_depth
        asyncio.run(serve_aio(args.port, depth, raw=args.kind == "aio-deep-raw"))
    else:
        serve_sync(args.port, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
