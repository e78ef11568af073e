"""Every server must answer like textclf: labels and probabilities of the benchmark texts.

Each server is asked for every text of a cell, one text per ModelInfer call with the same request
the load generator sends (TEXT ``BYTES [1, 1]`` in ``raw_input_contents``), through the KServe v2
stubs compiled into this project. The answer is decoded from either encoding a server may use
(``raw_output_contents`` or typed ``contents``), so the check does not depend on one client's
decoder.
"""
from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from textclf_protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc  # noqa: E402

CALL_TIMEOUT_S = 30.0


@dataclass
class Answers:
    probabilities: np.ndarray  # (N, C) float32
    labels: list[str]  # N


def infer_request(model: str, text: str, text_dims: int = 2) -> pb.ModelInferRequest:
    shape = [1, 1] if text_dims == 2 else [1]
    data = text.encode()
    return pb.ModelInferRequest(
        model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=shape)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in ("PROBABILITIES", "LABEL")],
        raw_input_contents=[struct.pack("<I", len(data)) + data])


def _raw_bytes_elements(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4: i + 4 + n])
        i += 4 + n
    return out


def decode_response(response: pb.ModelInferResponse) -> tuple[np.ndarray, list[str]]:
    """(PROBABILITIES as a float32 row per text, LABEL strings) from either tensor encoding."""
    tensors: dict[str, Any] = {}
    for index, output in enumerate(response.outputs):
        raw = response.raw_output_contents[index] if index < len(response.raw_output_contents) else None
        if output.datatype == "FP32":
            values = np.frombuffer(raw, dtype="<f4") if raw is not None else np.asarray(
                output.contents.fp32_contents, dtype=np.float32)
            rows = int(output.shape[0]) if output.shape else 1
            tensors[output.name] = values.astype(np.float32).reshape(rows, -1)
        elif output.datatype == "BYTES":
            items = _raw_bytes_elements(raw) if raw is not None else list(output.contents.bytes_contents)
            tensors[output.name] = [item.decode() for item in items]
    missing = {"PROBABILITIES", "LABEL"} - set(tensors)
    if missing:
        raise ValueError(f"response lacks {sorted(missing)} (has {[o.name for o in response.outputs]})")
    return tensors["PROBABILITIES"], tensors["LABEL"]


def fetch_answers(address: str, model: str, texts: list[str], text_dims: int = 2) -> Answers:
    """One single-text ModelInfer per text, in order."""
    rows, labels = [], []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for text in texts:
            probabilities, label = decode_response(stub.ModelInfer(infer_request(model, text, text_dims),
                                                                   timeout=CALL_TIMEOUT_S))
            if probabilities.shape[0] != 1 or len(label) != 1:
                raise ValueError(f"one text, but {probabilities.shape[0]} probability rows and {len(label)} labels")
            rows.append(probabilities[0])
            labels.append(label[0])
    return Answers(np.stack(rows), labels)


def compare(reference: Answers, answers: Answers) -> dict[str, Any]:
    """Label agreement and the largest probability difference against the reference (textclf)."""
    if len(reference.labels) != len(answers.labels):
        raise ValueError(f"{len(answers.labels)} answers for {len(reference.labels)} reference texts")
    if reference.probabilities.shape != answers.probabilities.shape:
        return {"texts": len(reference.labels), "same_labels": 0, "disagreements": list(range(len(reference.labels))),
                "max_abs_dp": float("inf"), "note": f"probability shape {answers.probabilities.shape} != "
                                                    f"{reference.probabilities.shape}"}
    differ = [i for i, (a, b) in enumerate(zip(reference.labels, answers.labels)) if a != b]
    dp = np.abs(reference.probabilities.astype(np.float64) - answers.probabilities.astype(np.float64))
    return {"texts": len(reference.labels), "same_labels": len(reference.labels) - len(differ),
            "disagreements": differ, "max_abs_dp": float(dp.max()) if dp.size else 0.0}


def agrees(result: dict[str, Any], atol: float) -> bool:
    return not result["disagreements"] and result["max_abs_dp"] <= atol


def wait_model_ready(address: str, model: str, timeout_s: float, alive) -> None:
    """Until the server answers ServerReady and ModelReady(model) with ready=true (KServe v2 health).

    ``alive()`` is checked between attempts so that a crashed server fails fast. The channel call
    itself waits for the port (wait_for_ready); between not-ready answers it backs off 50 ms."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if not alive():
                raise RuntimeError("server exited while starting")
            if remaining <= 0:
                raise TimeoutError(f"{address} not ready for {model!r} after {timeout_s:.0f} s")
            try:
                timeout = min(remaining, 1.0)
                if (stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout, wait_for_ready=True).ready
                        and stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=timeout).ready):
                    return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL):
                    raise
            time.sleep(0.05)  # polling a health RPC between not-ready answers, not synchronising
