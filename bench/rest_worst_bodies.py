"""Time to refuse the worst-case 4 MiB KServe REST bodies vs parsing the worst 4 MiB gRPC message.

    .venv/bin/python bench/rest_worst_bodies.py

The REST body is decoded whole on the event loop (bounded by ``max_receive_message_bytes``); this
measures that bound next to what gRPC's protobuf parsing of the same size costs (docs/rest.md
"Limits"). Best of 3, one process, so both numbers come from the same machine state.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.api import rest  # noqa: E402
from service.errors import InvalidArgument  # noqa: E402
from textclf_protos.inference import grpc_service_pb2 as pb  # noqa: E402

LIMIT = 4 * 1024 * 1024  # max_receive_message_bytes default


def best_ms(work: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def refuse(body: bytes) -> str:
    try:
        rest.infer_request(body, None, "news", "", max_texts=256)
    except InvalidArgument as exc:
        return str(exc)[:60]
    return "accepted"


def main() -> int:
    n = (LIMIT - 200) // 3
    strings = json.dumps({"inputs": [{"name": "TEXT", "shape": [n], "datatype": "BYTES", "data": [""] * n}]},
                         separators=(",", ":")).encode()
    m = (LIMIT - 200) // 2
    numbers = ("[" + ",".join(["0"] * m) + "]").encode()
    nested = b"[" * LIMIT
    k = (LIMIT - 200) // 3
    objects = ("[" + ",".join(["{}"] * k) + "]").encode()
    j = (LIMIT - 200) // 5
    nulls = ("[" + ",".join(["null"] * j) + "]").encode()
    for name, body in ((f"REST: {n} empty strings", strings), (f"REST: {m} numbers", numbers),
                       (f"REST: {k} empty objects", objects), (f"REST: {j} nulls", nulls),
                       (f"REST: {LIMIT}-deep nesting", nested)):
        print(f"{name} ({len(body)} bytes): refused in {best_ms(lambda: refuse(body)):.1f} ms ({refuse(body)})")
    request = pb.ModelInferRequest(model_name="news")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.extend([b""] * ((LIMIT - 100) // 2))
    raw = request.SerializeToString()
    print(f"gRPC: {len(tensor.contents.bytes_contents)} empty bytes elements ({len(raw)} bytes): parsed in "
          f"{best_ms(lambda: pb.ModelInferRequest.FromString(raw)):.1f} ms (before any servicer code runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
