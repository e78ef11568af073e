"""A torch-free builder of tiny, valid model bundles for service and deployment tests.

The graph is built with ``onnx.helper`` and honours the bundle I/O contract (bundle/card.py):
inputs ``input_ids`` int64 [batch, seq] and ``lengths`` int64 [batch], output ``logits``
float32 [batch, num_labels]. It computes

    logits = mean(embedding[input_ids[b, :lengths[b]]]) @ W + bias

so padding never changes a text's answer (batch invariance holds by construction), and
``TinyBundle.expected_probabilities`` recomputes the same thing in numpy as a reference.

Usage::

    tiny = make_onnx_bundle(tmp_path / "models", name="news", version=1)
    tiny.path                      # <repo>/news/1
    tiny.expected_probabilities(["some text"])
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bundle.card import INPUT_IDS, INPUT_LENGTHS, OUTPUT_LOGITS, ModelCard, default_inputs, default_outputs
from bundle.store import publish_bundle
from bundle.tokenization import TextEncoder
from training.tokenizer import train_tokenizer

DEFAULT_LABELS = ("business", "sport", "tech")
DEFAULT_CORPUS = (
    "the market rallied as shares of the bank rose",
    "profits fell and the company cut its forecast",
    "the striker scored twice and the team won the match",
    "the coach praised the players after the cup final",
    "the new phone has a faster chip and a better camera",
    "software update fixes a security bug in the browser",
    "investors expect the central bank to raise rates",
    "the league season ends with a dramatic final game",
    "researchers built a robot that learns from video",
)
OPSET = 18


@dataclass
class TinyBundle:
    path: Path  # <repo>/<name>/<version>
    card: ModelCard
    encoder: TextEncoder
    embedding: np.ndarray  # (V, E) float32
    weight: np.ndarray  # (E, C) float32
    bias: np.ndarray  # (C,) float32
    labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    def expected_logits(self, texts: list[str]) -> np.ndarray:
        """numpy reference of the ONNX graph, one text at a time (float64 accumulation)."""
        rows = []
        for text in texts:
            batch = self.encoder.encode_batch([text])
            ids = batch.input_ids[0, : int(batch.lengths[0])]
            mean = self.embedding[ids].astype(np.float64).mean(axis=0)
            rows.append(mean @ self.weight.astype(np.float64) + self.bias)
        return np.asarray(rows, dtype=np.float32)

    def expected_probabilities(self, texts: list[str]) -> np.ndarray:
        logits = self.expected_logits(texts).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def build_model(embedding: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """Gather embedding -> masked mean over valid positions -> MatMul + bias."""
    init = [
        numpy_helper.from_array(embedding.astype(np.float32), "embedding"),
        numpy_helper.from_array(weight.astype(np.float32), "weight"),
        numpy_helper.from_array(bias.astype(np.float32), "bias"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", INPUT_IDS], ["embedded"], axis=0),  # (B, T, E)
        helper.make_node("Shape", [INPUT_IDS], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq_len"], axis=0),  # scalar T
        helper.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),  # (T,)
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["positions_row"]),  # (1, T)
        helper.make_node("Unsqueeze", [INPUT_LENGTHS, "axis1"], ["lengths_col"]),  # (B, 1)
        helper.make_node("Less", ["positions_row", "lengths_col"], ["valid"]),  # (B, T)
        helper.make_node("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["valid_f", "axis_last"], ["valid_3d"]),  # (B, T, 1)
        helper.make_node("Mul", ["embedded", "valid_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # (B, E)
        helper.make_node("Cast", ["lengths_col"], ["lengths_f"], to=TensorProto.FLOAT),  # (B, 1)
        helper.make_node("Div", ["summed", "lengths_f"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "weight"], ["projected"]),  # (B, C)
        helper.make_node("Add", ["projected", "bias"], [OUTPUT_LOGITS]),
    ]
    num_labels = int(weight.shape[1])
    graph = helper.make_graph(
        nodes,
        "tiny_mean_classifier",
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info(INPUT_LENGTHS, TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info(OUTPUT_LOGITS, TensorProto.FLOAT, ["batch", num_labels])],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="textclf-tests")
    model.ir_version = 10  # readable by onnxruntime 1.31 (and older ones)
    onnx.checker.check_model(model)
    return model


def make_onnx_bundle(
    repository: str | Path,
    *,
    name: str = "news",
    version: int | None = 1,
    labels: list[str] | tuple[str, ...] = DEFAULT_LABELS,
    max_len: int = 64,
    embedding_dim: int = 16,
    seed: int = 0,
    corpus: list[str] | tuple[str, ...] = DEFAULT_CORPUS,
    metrics: dict | None = None,
    parity_passed: bool = True,
) -> TinyBundle:
    """Publish a tiny bundle to ``<repository>/<name>/<version>`` and return it with a reference.

    Different seeds give different weights, so two versions answer differently.
    ``version=None`` publishes the next free version.
    """
    labels = list(labels)
    tokenizer = train_tokenizer(list(corpus), vocab_size=1000, min_frequency=1)
    encoder = TextEncoder(tokenizer, max_len)
    rng = np.random.default_rng(seed)
    embedding = rng.normal(0.0, 1.0, size=(encoder.vocab_size, embedding_dim)).astype(np.float32)
    weight = rng.normal(0.0, 1.0, size=(embedding_dim, len(labels))).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(len(labels),)).astype(np.float32)
    card = ModelCard(
        name=name,
        version=version or 0,
        labels=labels,
        max_len=max_len,
        architecture={"kind": "tiny-mean-embedding", "embedding_dim": embedding_dim, "vocab_size": encoder.vocab_size},
        inputs=default_inputs(),
        outputs=default_outputs(len(labels)),
        sha256={},
        opset=OPSET,
        metrics=dict(metrics if metrics is not None else {"accuracy": 0.5, "macro_f1": 0.5}),
        parity={"passed": parity_passed, "max_abs_diff": 0.0, "atol": 1e-5, "texts": 0, "note": "synthetic test bundle"},
        versions={"onnx": onnx.__version__},
        source={"builder": "tests/support/onnx_bundle.py", "seed": seed},
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_path, tokenizer_path = Path(tmp) / "model.onnx", Path(tmp) / "tokenizer.json"
        onnx.save(build_model(embedding, weight, bias), str(model_path))
        tokenizer.save(str(tokenizer_path))
        path = publish_bundle(repository, card, model_path, tokenizer_path, version=version)
    return TinyBundle(path=path, card=card, encoder=encoder, embedding=embedding, weight=weight, bias=bias,
                      labels=labels)
