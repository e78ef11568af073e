"""The export-time twin of RecurrentClassifier: same embedding, pooling and head, recurrence via the custom op."""
from __future__ import annotations

import torch
from torch import nn

from export import recurrent_op  # noqa: F401 - registers torch.ops.textclf.recurrent_layer
from export.recurrent_op import onnx_layer_weights
from training.model import RecurrentClassifier


class ExportableClassifier(nn.Module):
    """Wraps a trained model for ONNX export without changing its semantics.

    The weights of each recurrent layer are copied once into ONNX gate layout (buffers W{k},
    R{k}, B{k}); ``embedding``, ``dropout`` and ``head`` are the model's own modules and pooling
    is ``RecurrentClassifier.pool`` itself (it only reads ``self.config``).
    """

    def __init__(self, model: RecurrentClassifier) -> None:
        super().__init__()
        self.config = model.config
        self.embedding = model.embedding
        self.dropout = model.dropout
        self.head = model.head
        for layer in range(self.config.num_layers):
            w, r, b = onnx_layer_weights(model.rnn, layer, self.config.cell)
            self.register_buffer(f"W{layer}", w)
            self.register_buffer(f"R{layer}", r)
            self.register_buffer(f"B{layer}", b)
        self.eval()

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Clamp lengths to [1, seq] inside the graph: a 0-length sequence gives garbage (last
        # pooling) or NaN (mean/max) in onnxruntime, and a length beyond seq reads past the
        # tensor. The tokenizer contract never produces either; the graph stays defined anyway.
        lengths = lengths.clamp(min=1).clamp(max=input_ids.shape[1])
        x = self.embedding(input_ids)  # (B, T, E)
        h_n = x  # replaced below; num_layers >= 1
        for layer in range(self.config.num_layers):
            x, h_n = torch.ops.textclf.recurrent_layer(
                x,
                lengths,
                getattr(self, f"W{layer}"),
                getattr(self, f"R{layer}"),
                getattr(self, f"B{layer}"),
                self.config.cell,
            )  # (B, T, D*H), (D, B, H)
        # pool() indexes final_hidden[-2:] / [-1]: the last layer's h_n has the same tail.
        pooled = RecurrentClassifier.pool(self, x, h_n, lengths)  # type: ignore[arg-type]
        return self.head(self.dropout(pooled))  # (B, C)
