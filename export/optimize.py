"""Graph optimisation (onnxruntime, offline) and dynamic INT8 quantisation of exported models."""
from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import onnxscript.optimizer

from export.onnx_export import ExportError, assert_named_dims

logger = logging.getLogger(__name__)

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
# Node types that show the recurrent layers / the head really run in integer arithmetic.
QUANTIZED_OP_TYPES = {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
FLOAT_RECURRENT_OP_TYPES = {"LSTM", "GRU", "RNN"}


def optimize_onnx(src: str | Path, dst: str | Path, *, level: str = "basic") -> Path:
    """Save onnxruntime's optimised graph to ``dst``.

    ``basic`` (constant folding, redundant-node elimination) keeps only standard ONNX ops, so
    the file stays portable across execution providers; ``extended`` adds CPU-specific fusions
    (docs/export.md has the measurements behind the default).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    assert_named_dims(model)
    logger.info("optimised (%s) %s -> %s", level, src, dst)
    return Path(dst)


def op_histogram(path_or_model: str | Path | onnx.ModelProto) -> dict[str, int]:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


# Dynamic INT8 scales activations per batch, so the same text can score slightly differently
# alone and inside a batch. Bound: max |delta probability| between a text scored alone and the
# same text inside any batch. Measured 0.0048 on the default LSTM's 206 validation texts
# (batches of 64 and next to the longest text: bench/bench_onnx_vs_torch.py,
# "int8_batch_invariance_val"; 0.024 for the former mean-pooling default); tested on a tiny fitted LSTM in
# tests/export/test_int8.py::test_int8_batch_invariance_is_bounded; docs/export.md "INT8".
INT8_BATCH_INVARIANCE_MAX_ABS_PROB = 0.05
# What --quantize int8 asks onnxruntime for: embedding lookups (Gather, weights stored int8 and
# dequantised after the lookup), LSTM layers (DynamicQuantizeLSTM) and the head (MatMulInteger).
INT8_OP_TYPES = ("Gather", "LSTM", "MatMul", "Gemm")


def quantize_int8(src: str | Path, dst: str | Path, *, op_types: tuple[str, ...] = INT8_OP_TYPES) -> dict[str, int]:
    """Dynamic INT8 quantisation; returns the op histogram of the result.

    Pre-steps a dynamo export needs (measured): drop value_info (else ShapeInferenceError in
    the quantiser) and fold constants with the onnxscript optimizer (else weights computed by
    Slice/Concat stay float). ONNX Runtime has an integer kernel for LSTM (DynamicQuantizeLSTM)
    but none for GRU or RNN: those stay float and only the embedding and head become integer;
    ``quantized_parts`` says which, and the exporter refuses such a model unless forced.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    model = onnxscript.optimizer.optimize(model, input_size_limit=10**8, output_size_limit=10**8)
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="textclf-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        onnx.save(model, str(prepared))
        quantize_dynamic(
            str(prepared),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            per_channel=False,
        )
    histogram = op_histogram(dst)
    if not QUANTIZED_OP_TYPES & set(histogram):
        raise ExportError(f"quantisation produced no integer ops: {histogram}")
    assert_named_dims(onnx.load(str(dst)))
    logger.info("quantised int8 %s -> %s: %s", src, dst, histogram)
    return histogram


def quantized_parts(fp32_path: str | Path, int8_path: str | Path) -> dict[str, Any]:
    """What a quantised file really runs in integer arithmetic, read from its graph.

    ``integer``/``float``: the parts (``embedding``, the recurrent cell, ``head``) that were /
    were not quantised; ``partial`` when anything stayed float; file sizes and their ratio.
    Goes into the model card as ``quantization_details``.
    """
    model = onnx.load(str(int8_path))
    int8_initializers = {init.name for init in model.graph.initializer
                         if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    ops = Counter(node.op_type for node in model.graph.node)
    integer, kept_float = [], []
    embedding_int8 = any(node.op_type == "Gather" and node.input[0] in int8_initializers for node in model.graph.node)
    (integer if embedding_int8 else kept_float).append("embedding")
    if ops["DynamicQuantizeLSTM"]:
        integer.append("lstm")
    kept_float += sorted(op.lower() for op in FLOAT_RECURRENT_OP_TYPES if ops[op])
    (integer if ops["MatMulInteger"] or ops["DynamicQuantizeMatMul"] else kept_float).append("head")
    fp32_bytes, int8_bytes = Path(fp32_path).stat().st_size, Path(int8_path).stat().st_size
    return {
        "integer": integer,
        "float": kept_float,
        "partial": bool(kept_float),
        "op_types_requested": list(INT8_OP_TYPES),
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / int8_bytes, 2),
        "batch_invariance_max_abs_prob": INT8_BATCH_INVARIANCE_MAX_ABS_PROB,
    }


def int8_speedup(fp32_path: str | Path, int8_path: str | Path, *, batch: int = 64, length: int = 256,
                 windows: int = 5, threads: int = 1) -> float:
    """INT8 / fp32 throughput at ``batch`` x ``length`` (median of interleaved windows, 1 thread).

    A quick side-by-side measurement at export time so the card can say whether this INT8 file
    pays on the exporting machine (bench/bench_onnx_vs_torch.py is the full comparison).
    """
    import time

    import numpy as np

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in (fp32_path, int8_path)]
    tables = [i.dims[0] for i in onnx.load(str(fp32_path)).graph.initializer if i.name == "embedding.weight"]
    vocab = tables[0] if tables else 3  # ids only steer the lookup, not the work
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(2, vocab, (batch, length)).astype(np.int64),
             "lengths": np.full(batch, length, dtype=np.int64)}
    times: list[list[float]] = [[], []]
    for session in sessions:
        session.run(None, feeds)  # warm-up
    for _ in range(windows):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            times[k].append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))


def check_int8_pays(cell: str, force: bool) -> None:
    """Refuse INT8 for a model whose recurrent layers cannot be quantised, unless forced.

    onnxruntime has a dynamic INT8 kernel for LSTM only; a GRU/RNN "INT8" model keeps its
    recurrence (the bulk of the compute) in float, so it is not faster (measured 0.89-1.05x).
    """
    if cell != "lstm" and not force:
        raise ExportError(
            f"--quantize int8: onnxruntime has no INT8 kernel for {cell.upper()} layers; only the embedding and "
            "head would be quantised (smaller, not faster). Use --force-int8 to publish such a partial INT8 "
            "bundle anyway (its card lists what stayed float)"
        )
