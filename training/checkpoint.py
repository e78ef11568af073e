"""Checkpoints: weights + ModelConfig + tokenizer + labels in one file.

Everything stored is a tensor, a primitive or a container of those, so the file loads with
``torch.load(path, weights_only=True)`` (no pickle of arbitrary objects).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bundle.tokenization import TextEncoder
from training.model import ModelConfig, RecurrentClassifier

CHECKPOINT_FORMAT = "textclf-checkpoint/1"


class CheckpointError(Exception):
    """The file is not a textclf checkpoint or is incomplete."""


@dataclass
class LoadedCheckpoint:
    model: RecurrentClassifier  # in eval mode
    config: ModelConfig
    encoder: TextEncoder
    labels: list[str]
    max_len: int
    metrics: dict[str, Any]
    manifest_path: str | None
    raw: dict[str, Any] = field(repr=False)


def save_checkpoint(
    path: str | Path,
    model: RecurrentClassifier,
    *,
    labels: list[str],
    tokenizer_json: str,
    max_len: int,
    metrics: dict[str, Any] | None = None,
    data_manifest: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file + rename) so a killed run never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "labels": list(labels),
        "tokenizer_json": tokenizer_json,
        "max_len": int(max_len),
        "metrics": metrics or {},
        "data_manifest": data_manifest,
    }
    payload.update(extra or {})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        config = ModelConfig.from_dict(raw["model_config"])
        model = RecurrentClassifier(config)
        model.load_state_dict(raw["state_dict"])
        encoder = TextEncoder.from_json(raw["tokenizer_json"], int(raw["max_len"]))
    except KeyError as exc:
        raise CheckpointError(f"{path} lacks {exc}") from exc
    model.eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        encoder=encoder,
        labels=list(raw["labels"]),
        max_len=int(raw["max_len"]),
        metrics=dict(raw.get("metrics") or {}),
        manifest_path=raw.get("data_manifest"),
        raw=raw,
    )
