"""Value types shared by the core and the API layers."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from bundle.card import ModelCard

if TYPE_CHECKING:
    from service.batching import Scheduler
    from service.runtime import ModelRuntime


@dataclass(eq=False)
class LoadedModel:
    """One loaded, warmed-up model version: what servicers see of a model."""

    name: str
    version: int
    card: ModelCard
    runtime: "ModelRuntime"
    scheduler: "Scheduler"

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    @property
    def max_len(self) -> int:
        return int(self.card.max_len)


@dataclass(frozen=True)
class ModelState:
    name: str
    version: int
    state: Literal["READY", "UNAVAILABLE", "LOADING"]
    reason: str = ""


@dataclass(frozen=True)
class ClassifyRequest:
    """What every API's inference call becomes (service/api/*): the core's one request type."""

    model: str
    version: int | None  # None = the model's default version
    texts: Sequence[str]  # may be a protobuf repeated field: its length is checked before any text is read
    deadline: float | None  # time.monotonic() clock; None = no deadline


@dataclass
class Classification:
    model_name: str
    model_version: int
    labels: list[str]  # the model's label list (column order of probabilities)
    probabilities: np.ndarray  # (N, C) float32
    predicted: list[str] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def top_k(self, row: int, k: int) -> list[tuple[str, float]]:
        probs = self.probabilities[row]
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.labels[i], float(probs[i])) for i in order]
