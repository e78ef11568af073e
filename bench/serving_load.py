"""Closed-loop gRPC load generator: one client process of the serving benchmark.

Run by ``bench/bench_serving.py`` (never imported by the server). Protocol on stdio:

1. reads one JSON object (the ``WorkerSpec``) from the first stdin line;
2. connects, sends a few warm-up calls, prints ``ready`` on stdout;
3. reads the measurement start ``t0`` (``time.monotonic()``, system-wide on Linux so every
   worker of one cell shares the same window) from the next stdin line;
4. keeps ``concurrency`` callers busy (each sends its next request as soon as the previous answer
   arrives) until ``t0 + seconds``; a request counts when it completed inside [t0, t0 + seconds];
5. prints one JSON line with latencies, error counts and CPU / server-metric snapshots.

APIs: ``textclf`` (textclf.v1 Classify, ``texts_per_request`` texts per call), ``textclf-stream``
(textclf.v1 ClassifyStream: one long-lived stream per connection, each caller's request is one
message on it, answered by id), ``kserve`` (ModelInfer through raw grpc.aio stubs, the request
messages built once), ``kserve-triton`` (ModelInfer through ``tritonclient.grpc.aio``, building
InferInput per call as a user of that client does), ``kserve-rest`` (KServe v2 infer over HTTP/REST
with a JSON body, one keep-alive connection per caller, a minimal asyncio HTTP/1.1 client so the
client costs little; ``rest_address``).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import resource
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

logger = logging.getLogger(__name__)

APIS = ("textclf", "textclf-stream", "kserve", "kserve-triton", "kserve-rest")
CALL_TIMEOUT_S = 30.0
WARMUP_CALLS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
METRIC_FAMILIES = ("textclf_batch_size", "textclf_queue_duration_seconds", "textclf_inference_duration_seconds",
                   "textclf_request_duration_seconds")

Caller = Callable[[int], Awaitable[None]]


@dataclass
class WorkerSpec:
    address: str
    api: str
    model: str
    texts: list[str]
    concurrency: int
    seconds: float
    offset: int = 0  # first text index (several workers start on different texts)
    server_pid: int | None = None
    metrics_url: str | None = None
    channels: int = 1  # separate connections (several workers behind SO_REUSEPORT each take connections)
    texts_per_request: int = 1  # textclf / textclf-stream: texts in one ClassifyRequest
    text_dims: int = 1  # kserve-triton: TEXT as [1] or [1, 1] (PyTriton accepts only [N, 1])
    rest_address: str = ""  # kserve-rest: host:port of the server's REST port


@dataclass
class CpuSnapshot:
    client_s: float
    server_s: float | None
    machine_busy_s: float
    machine_total_s: float


@dataclass
class WorkerResult:
    latencies_ms: list[float]
    errors: dict[str, int]
    window_s: float
    cpu_start: CpuSnapshot | None = None
    cpu_end: CpuSnapshot | None = None
    metrics_start: dict[str, float] = field(default_factory=dict)
    metrics_end: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- measurements

def _own_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return children


def _descendants(pid: int) -> list[int]:
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(_children(child))
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid``, its threads and its live descendant processes (the workers of a
    multi-worker supervisor; tritonserver and its stubs under PyTriton) from /proc (None when
    unreadable)."""
    own = _own_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(_own_cpu_seconds(child) or 0.0 for child in _descendants(pid))


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def cpu_snapshot(server_pid: int | None) -> CpuSnapshot:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy, total = machine_cpu_seconds()
    server = process_cpu_seconds(server_pid) if server_pid else None
    return CpuSnapshot(usage.ru_utime + usage.ru_stime, server, busy, total)


def scrape_metrics(url: str | None) -> dict[str, float]:
    """Sums of ``_sum`` and ``_count`` of the service's histograms (all label sets together)."""
    if not url:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            text = response.read().decode()
    except OSError as exc:
        logger.warning("metrics scrape failed: %s", exc)
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if any(name in (f + "_sum", f + "_count") for f in METRIC_FAMILIES):
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


# ----------------------------------------------------------------------------- callers

async def _nothing_to_close() -> None:
    return None


def classify_requests(spec: WorkerSpec) -> list:
    """One request per text: that text and the next ``texts_per_request - 1`` ones (wrapping)."""
    from textclf_protos.textclf.v1 import textclf_pb2 as pb

    n, k = len(spec.texts), spec.texts_per_request
    return [pb.ClassifyRequest(model=spec.model, texts=[spec.texts[(j + m) % n] for m in range(k)]) for j in range(n)]


def textclf_caller(channel: grpc.aio.Channel, spec: WorkerSpec) -> tuple[Caller, Callable[[], Awaitable[None]]]:
    from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

    stub = pb_grpc.TextClassifierStub(channel)
    requests = classify_requests(spec)

    async def call(i: int) -> None:
        await stub.Classify(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)

    return call, _nothing_to_close


class StreamMessageError(Exception):
    """A ClassifyStream answer carrying an error instead of a response."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = grpc.StatusCode.UNKNOWN.name
        for status in grpc.StatusCode:
            if status.value[0] == code:
                self.code = status.name


def textclf_stream_caller(channel: grpc.aio.Channel,
                          spec: WorkerSpec) -> tuple[Caller, Callable[[], Awaitable[None]]]:
    """Callers share one ClassifyStream on ``channel``: each call writes one message and waits for
    the response with its id (the server answers in order, at most stream_max_in_flight at once)."""
    from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    requests = classify_requests(spec)
    outbox: asyncio.Queue = asyncio.Queue()
    waiting: dict[str, asyncio.Future] = {}
    ids = itertools.count()

    async def messages():
        while (message := await outbox.get()) is not None:
            yield message

    stream = pb_grpc.TextClassifierStub(channel).ClassifyStream(messages())

    async def read() -> None:
        try:
            async for answer in stream:
                future = waiting.pop(answer.id, None)
                if future is None or future.done():
                    continue
                if answer.HasField("error"):
                    future.set_exception(StreamMessageError(answer.error.code))
                else:
                    future.set_result(None)
        finally:
            for future in waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("stream ended"))

    reader = loop.create_task(read())

    async def call(i: int) -> None:
        ident = str(next(ids))
        waiting[ident] = future = loop.create_future()
        outbox.put_nowait(pb.ClassifyStreamRequest(id=ident, request=requests[i % len(requests)]))
        await asyncio.wait_for(future, CALL_TIMEOUT_S)

    async def close() -> None:
        outbox.put_nowait(None)
        await asyncio.wait_for(reader, CALL_TIMEOUT_S)

    return call, close


def kserve_caller(channel: grpc.aio.Channel, spec: WorkerSpec) -> tuple[Caller, Callable[[], Awaitable[None]]]:
    from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def request(text: str) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text.encode())
        return pb.ModelInferRequest(model_name=spec.model, inputs=[tensor])

    requests = [request(t) for t in spec.texts]

    async def call(i: int) -> None:
        await stub.ModelInfer(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)

    return call, _nothing_to_close


def triton_caller(spec: WorkerSpec) -> tuple[Caller, Callable[[], Awaitable[None]]]:
    import numpy as np
    import tritonclient.grpc.aio as triton

    client = triton.InferenceServerClient(spec.address)
    shape = [1] * spec.text_dims
    arrays = [np.array([t.encode()], dtype=np.object_).reshape(shape) for t in spec.texts]

    async def call(i: int) -> None:
        text = triton.InferInput("TEXT", shape, "BYTES")
        text.set_data_from_numpy(arrays[i % len(arrays)])
        await client.infer(spec.model, [text], client_timeout=CALL_TIMEOUT_S)

    return call, client.close


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.code = f"HTTP_{status}"


def rest_caller(spec: WorkerSpec) -> tuple[Caller, Callable[[], Awaitable[None]]]:
    """KServe v2 REST infer, JSON in and out, over one keep-alive connection per caller."""
    host, port = spec.rest_address.rsplit(":", 1)
    path = f"/v2/models/{spec.model}/infer"
    bodies = [json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": [t]}]}).encode()
              for t in spec.texts]
    requests = [f"POST {path} HTTP/1.1\r\nHost: {spec.rest_address}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def call(i: int) -> None:
        slot = i % spec.concurrency
        if slot not in connections:
            connections[slot] = await asyncio.open_connection(host, int(port))
        reader, writer = connections[slot]
        writer.write(requests[i % len(requests)])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CALL_TIMEOUT_S)
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        if status != 200:
            raise HttpError(status)

    async def close() -> None:
        for _, writer in connections.values():
            writer.close()

    return call, close


# ----------------------------------------------------------------------------- load

async def closed_loop(call: Caller, spec: WorkerSpec, t0: float) -> WorkerResult:
    t1 = t0 + spec.seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    snapshots: dict[str, object] = {}

    async def user(k: int) -> None:
        i = spec.offset + k
        while time.monotonic() < t1:
            start = time.perf_counter()
            try:
                await call(i)
                ok = True
            except grpc.aio.AioRpcError as exc:
                ok = False
                code = exc.code().name
            except (StreamMessageError, HttpError) as exc:
                ok = False
                code = exc.code
            except Exception as exc:  # noqa: BLE001 - tritonclient wraps errors in its own type
                ok = False
                code = type(exc).__name__
            end = time.monotonic()
            if t0 <= end <= t1:
                if ok:
                    latencies.append((time.perf_counter() - start) * 1e3)
                else:
                    errors[code] += 1
            i += spec.concurrency

    async def observer() -> None:
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))  # timing the window, not synchronising
        snapshots["cpu_start"], snapshots["metrics_start"] = cpu_snapshot(spec.server_pid), scrape_metrics(spec.metrics_url)
        await asyncio.sleep(max(0.0, t1 - time.monotonic()))
        snapshots["cpu_end"], snapshots["metrics_end"] = cpu_snapshot(spec.server_pid), scrape_metrics(spec.metrics_url)

    await asyncio.gather(observer(), *(user(k) for k in range(spec.concurrency)))
    return WorkerResult(latencies_ms=latencies, errors=dict(errors), window_s=spec.seconds, **snapshots)  # type: ignore[arg-type]


async def run_worker(spec: WorkerSpec) -> WorkerResult:
    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    close: Callable[[], Awaitable[None]]
    channel: grpc.aio.Channel | None = None
    if spec.api == "kserve-triton":
        call, close = triton_caller(spec)
    elif spec.api == "kserve-rest":
        call, close = rest_caller(spec)
    else:
        if spec.channels > 1:
            options.append(("grpc.use_local_subchannel_pool", 1))  # one connection per channel
        channels = [grpc.aio.insecure_channel(spec.address, options=options) for _ in range(spec.channels)]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30.0)
        make = {"textclf": textclf_caller, "textclf-stream": textclf_stream_caller}.get(spec.api, kserve_caller)
        callers = [make(channel, spec) for channel in channels]

        async def call(i: int) -> None:
            await callers[i % len(callers)][0](i)

        async def close() -> None:
            for _, close_caller in callers:
                await close_caller()
            for channel in channels:
                await channel.close()
    try:
        for i in range(WARMUP_CALLS):
            await call(spec.offset + i)
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return await closed_loop(call, spec, float(line))
    finally:
        await close()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = WorkerSpec(**json.loads(sys.stdin.readline()))
    if spec.api not in APIS:
        print(f"unknown api {spec.api!r}", file=sys.stderr)
        return 2
    result = asyncio.run(run_worker(spec))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
