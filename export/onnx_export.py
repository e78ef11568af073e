"""PyTorch model -> single-file ONNX (dynamo exporter), with guards against the silent pitfalls.

Pitfalls guarded here (measured, see docs/export.md):
1. a second dynamo export in one process can freeze ``seq`` through a stale dispatch cache:
   the caches of the recurrent ops are cleared before every export, and every exported model
   is checked to have named (dim_param) input dims;
2. ``dynamo=True`` writes ``model.onnx.data`` beside the model unless ``external_data=False``:
   the export goes to an empty directory and exactly one file must come out.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from bundle.card import INPUT_IDS, INPUT_LENGTHS, OUTPUT_LOGITS
from export.recurrent_op import translation_table
from export.wrapper import ExportableClassifier
from training.model import RecurrentClassifier

logger = logging.getLogger(__name__)

OPSET = 18
BATCH_DIM, SEQ_DIM = "batch", "seq"
EXPECTED_INPUT_DIMS = {INPUT_IDS: [BATCH_DIM, SEQ_DIM], INPUT_LENGTHS: [BATCH_DIM]}


class ExportError(Exception):
    """The exported model is malformed (fixed dims, extra files, failed checks)."""


def clear_dispatch_caches() -> int:
    """Clear the per-overload dispatch caches of the recurrent ops (pitfall 1); returns how many."""
    cleared = 0
    packets = [torch.ops.aten.lstm, torch.ops.aten.gru, torch.ops.aten.rnn_tanh, torch.ops.aten.rnn_relu]
    packets.append(torch.ops.textclf.recurrent_layer)
    for packet in packets:
        for overload_name in packet.overloads():
            cache = getattr(getattr(packet, overload_name), "_dispatch_cache", None)
            if cache is not None:
                cache.clear()
                cleared += 1
    return cleared


def sample_inputs(vocab_size: int, batch: int = 3, seq: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace sample whose batch and seq differ from each other and from 0/1 (no specialisation)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, vocab_size, (batch, seq), generator=generator)
    lengths = torch.tensor([seq] + [max(1, seq - 2 * i) for i in range(1, batch)], dtype=torch.int64)
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, length:] = 0
    return input_ids, lengths


def input_dims(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    return {
        value.name: [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in model.graph.input
    }


def assert_named_dims(model: onnx.ModelProto) -> None:
    """Raise ExportError unless inputs are exactly input_ids [batch, seq] and lengths [batch]."""
    dims = input_dims(model)
    if dims != EXPECTED_INPUT_DIMS:
        raise ExportError(f"exported inputs have dims {dims}, expected {EXPECTED_INPUT_DIMS} (frozen axis?)")
    outputs = [o.name for o in model.graph.output]
    if outputs != [OUTPUT_LOGITS]:
        raise ExportError(f"exported outputs are {outputs}, expected [{OUTPUT_LOGITS!r}]")


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _without_torchvision_notice() -> Iterator[None]:
    """The exporter warns once per torchvision op in its registry when torchvision is absent;
    our models use none, so the notice is noise in every export log."""
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _DropTorchvisionNotice()
    registry_logger.addFilter(notice)
    try:
        yield
    finally:
        registry_logger.removeFilter(notice)


def export_onnx(model: RecurrentClassifier, path: str | Path, *, opset: int = OPSET) -> Path:
    """Export ``model`` to exactly one ONNX file at ``path`` and verify its dynamic axes."""
    path = Path(path)
    if opset < 18:
        raise ValueError("opset must be >= 18")
    wrapper = ExportableClassifier(model)
    sample = sample_inputs(model.config.vocab_size)
    batch, seq = torch.export.Dim(BATCH_DIM, min=1), torch.export.Dim(SEQ_DIM, min=1)
    clear_dispatch_caches()
    with tempfile.TemporaryDirectory(prefix="textclf-export-") as tmp:
        target = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), _without_torchvision_notice():
            warnings.filterwarnings("ignore", message=".*axis name.*")
            # torch's own pytree internals, not our code (torch 2.13)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                wrapper,
                sample,
                None,
                dynamo=True,
                input_names=[INPUT_IDS, INPUT_LENGTHS],
                output_names=[OUTPUT_LOGITS],
                dynamic_shapes={INPUT_IDS: {0: batch, 1: seq}, INPUT_LENGTHS: {0: batch}},
                custom_translation_table=translation_table(),
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
            program.save(str(target), external_data=False)
        written = sorted(p.name for p in Path(tmp).iterdir())
        if written != ["model.onnx"]:
            raise ExportError(f"export wrote {written}, expected exactly ['model.onnx']")
        assert_named_dims(onnx.load(str(target)))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), path)
    logger.info("exported %s (%s, %d layer(s), %s) to %s", model.config.cell,
                "bi" if model.config.bidirectional else "uni", model.config.num_layers, model.config.pooling, path)
    return path


def check_onnx(path: str | Path) -> onnx.ModelProto:
    """Full ONNX checker (with shape inference) plus the I/O contract; returns the loaded model."""
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker rejected {path}: {exc}") from exc
    assert_named_dims(model)
    return model

