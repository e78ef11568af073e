"""The recurrent classifier: only the nn.Module and its config (nanoGPT style).

The checkpoint stores ``ModelConfig`` as a plain dict so ``export/`` can rebuild the model
without importing the training loop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CellType = Literal["rnn", "gru", "lstm"]
PoolingType = Literal["last", "mean", "max"]

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("last", "mean", "max")


@dataclass
class ModelConfig:
    vocab_size: int
    num_labels: int
    cell: CellType = "gru"
    embedding_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    pooling: PoolingType = "last"
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if self.vocab_size < 2 or self.num_labels < 2:
            raise ValueError("vocab_size and num_labels must be >= 2")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class RecurrentClassifier(nn.Module):
    """Embedding -> (bi)RNN/GRU/LSTM over valid positions only -> pooling -> linear.

    Inputs are right-padded ids (B, T) and lengths (B,) with every length >= 1. Padding never
    reaches the recurrence (packed sequences), so a text's logits do not depend on its batch.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_id)
        self.rnn = CELLS[config.cell](
            input_size=config.embedding_dim,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size * config.num_directions, config.num_labels)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(input_ids)  # (B, T, E)
        outputs, final_hidden = self.encode(embedded, lengths)  # (B, T, D*H), (L*D, B, H)
        pooled = self.pool(outputs, final_hidden, lengths)  # (B, D*H)
        return self.head(self.dropout(pooled))  # (B, C)

    def encode(self, embedded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence on packed sequences.

        Returns outputs (B, T, D*H) that are exactly zero past each length, and the final
        hidden state (L*D, B, H) of each valid sequence (PyTorch's h_n layout).
        """
        total_length = embedded.shape[1]
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, hidden = self.rnn(packed)
        final_hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=total_length)
        return outputs, final_hidden

    def pool(self, outputs: torch.Tensor, final_hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pool over valid positions only; ``outputs`` must be zero past each length."""
        pooling = self.config.pooling
        if pooling == "last":
            if self.config.bidirectional:
                # last layer: forward direction ends at len-1, backward direction at position 0
                return torch.cat([final_hidden[-2], final_hidden[-1]], dim=-1)  # (B, 2H)
            return final_hidden[-1]  # (B, H)
        positions = torch.arange(outputs.shape[1], device=outputs.device).unsqueeze(0)  # (1, T)
        valid = (positions < lengths.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        if pooling == "mean":
            summed = (outputs * valid.to(outputs.dtype)).sum(dim=1)  # (B, D*H)
            return summed / lengths.unsqueeze(1).to(outputs.dtype)
        masked = outputs.masked_fill(~valid, float("-inf"))
        return masked.max(dim=1).values  # (B, D*H)
