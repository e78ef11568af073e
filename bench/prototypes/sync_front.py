"""Prototype (issue 11, measured, not the product): KServe v2 ModelInfer on grpcio's thread-pool
(sync) server with a combining batcher, to learn whether that front end beats the grpc.aio one.

    .venv/bin/python bench/prototypes/sync_front.py --bundle models/news/1 --model news --grpc-port 50071 \
        --http-port 0 --metrics-port 0 --workdir /tmp/x [--threads 16]

(The launcher arguments of bench/peers/launch_args.py, so bench/peers/bench_peers.py can start it
as the ``textclf-sync`` server.) What it has: ServerLive, ServerReady, ModelReady, ModelInfer
(the product's own codec, ``service/api/kserve_codec.py``, and its ``ModelRuntime``: the same
tokenizer, bounded tokenization, onnxruntime session options and padding), gRPC core's I/O
threads chosen as ``python -m service`` does, the same channel options, and per call the request
duration histogram and text counter the product observes. What it lacks: everything else (admission
limits, deadlines, the request-bytes budget, statistics, tracing, drain, hot reload, streams).

The combining batcher: a handler thread tokenizes its own texts (with the GIL released inside
``tokenizers``, or held on the product's Python fast path for small calls, which came after the one
measured run), then joins the queue. When no batch is computing, it becomes the leader and
computes at once (a lone call: no thread hand-off at all). Otherwise it waits; when the leader's
batch ends, the leader answers its batch and hands the lead to the oldest waiting call, which
computes everything queued by then (up to ``max_batch_size`` texts) as one batch.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "peers"))
sys.path.insert(0, str(ROOT / "bench"))

from service.grpc_io import choose_grpc_io  # noqa: E402

choose_grpc_io(False)  # before grpc is imported, as python -m service does

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from prometheus_client import Counter, Histogram  # noqa: E402

from bundle.store import verify_bundle  # noqa: E402
from launch_args import launcher_parser  # noqa: E402
from serving_support import serve_sync_until_signal  # noqa: E402
from service.api import kserve_codec as codec  # noqa: E402
from service.runtime import ModelRuntime  # noqa: E402
from service.server import grpc_server_options  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.types import Classification  # noqa: E402
from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc  # noqa: E402

logger = logging.getLogger("sync_front")

REQUEST_SECONDS = Histogram("proto_request_duration_seconds", "request time", ["api", "code"])
TEXTS = Counter("proto_texts", "texts classified", ["model", "version"])


class _Slot:
    __slots__ = ("rows", "done", "result", "error", "lead")

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.lead = False


class CombiningBatcher:
    """Thread-safe; see the module docstring. ``run`` blocks until ``rows`` are computed."""

    def __init__(self, runtime: ModelRuntime, max_batch_size: int) -> None:
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._computing = False

    def run(self, rows: list[np.ndarray]) -> np.ndarray:
        slot = _Slot(rows)
        with self._lock:
            self._queue.append(slot)
            lead = not self._computing
            self._computing = True
        if not lead:
            slot.done.wait()  # answered, or handed the lead
        if lead or slot.lead:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Compute one batch from the queue's head (this thread's own slot is first), answer it,
        hand the lead on (or end it when nothing waits)."""
        with self._lock:
            batch = [self._queue.popleft()]
            texts = len(batch[0].rows)
            while self._queue and texts + len(self._queue[0].rows) <= self.max_batch_size:
                texts += len(self._queue[0].rows)
                batch.append(self._queue.popleft())
        try:
            probabilities = self.runtime.run([row for s in batch for row in s.rows])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for s in batch:
                s.error = exc
        else:
            start = 0
            for s in batch:
                s.result = probabilities[start:start + len(s.rows)]
                start += len(s.rows)
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._computing = False
            else:
                successor.lead = True
        for s in batch[1:]:
            s.done.set()
        if successor is not None:
            successor.done.set()


class SyncKServe(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, name: str, version: int, runtime: ModelRuntime, batcher: CombiningBatcher,
                 max_texts: int) -> None:
        self.name, self.version, self.runtime, self.batcher = name, version, runtime, batcher
        self.labels = list(runtime.card.labels)
        self.max_texts = max_texts
        self._ok = REQUEST_SECONDS.labels("kserve.ModelInfer", "OK")
        self._texts = TEXTS.labels(name, str(version))

    def ServerLive(self, request, context):  # noqa: N802 - gRPC method names
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == self.name)

    def ModelInfer(self, request, context):  # noqa: N802
        start = time.perf_counter()
        try:
            decoded = codec.decode_request(request, max_texts=self.max_texts)
        except Exception as exc:  # noqa: BLE001 - the product's codec raises its own errors
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if decoded.model_name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {decoded.model_name}")
        encoded = self.runtime.encode(decoded.texts)
        probabilities = self.batcher.run([t.ids for t in encoded])
        result = Classification(model_name=self.name, model_version=self.version, labels=self.labels,
                                probabilities=probabilities,
                                predicted=[self.labels[i] for i in probabilities.argmax(axis=1)],
                                truncated=[t.truncated for t in encoded])
        response = codec.encode_response(decoded, result)
        self._texts.inc(len(encoded))
        self._ok.observe(time.perf_counter() - start)
        return response


def main(argv: list[str] | None = None) -> int:
    parser = launcher_parser(__doc__)
    parser.add_argument("--threads", type=int, default=16, help="handler threads (grpcio's thread pool)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    card = verify_bundle(args.bundle)
    runtime = ModelRuntime.load(args.bundle, card, providers=["CPUExecutionProvider"],
                                intra_op_threads=settings.intra_op_threads, inter_op_threads=1,
                                spinning=settings.intra_op_spinning)
    runtime.warmup(args.max_batch_size)
    batcher = CombiningBatcher(runtime, args.max_batch_size)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(args.threads, thread_name_prefix="handler"),
                         options=grpc_server_options(settings))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        SyncKServe(args.model, int(args.bundle.name), runtime, batcher, settings.max_texts_per_request), server)
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    serve_sync_until_signal(server, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
