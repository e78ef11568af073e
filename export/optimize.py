"""Graph optimisation (onnxruntime, offline) and dynamic INT8 quantisation of exported models."""
from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

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


def quantize_int8(src: str | Path, dst: str | Path, *, op_types: tuple[str, ...] = ("LSTM", "MatMul", "Gemm")) -> dict[str, int]:
    """Dynamic INT8 quantisation; returns the op histogram of the result.

    Pre-steps a dynamo export needs (measured): drop value_info (else ShapeInferenceError in
    the quantiser) and fold constants with the onnxscript optimizer (else weights computed by
    Slice/Concat stay float). ONNX Runtime has an integer kernel for LSTM (DynamicQuantizeLSTM)
    but none for GRU or RNN: those stay float and only the head (and embedding lookups, if
    enabled) become integer. The caller reports that honestly.
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
