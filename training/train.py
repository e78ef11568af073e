"""The training loop: seeded, resumable, early-stopped on validation macro-F1.

A run directory holds everything a run produced::

    <run>/split/{manifest.json,train,val,test.jsonl}   the saved split (training/data.py)
    <run>/tokenizer.json                               trained on the training split only
    <run>/last.pt   every epoch, with optimizer/epoch/RNG/early-stop state (for --resume)
    <run>/best.pt   best validation macro-F1; after the test evaluation it also carries metrics
    <run>/metrics.json, training_curves.png, confusion_matrix.png
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bundle.tokenization import PAD_ID, UNK_ID, EncodedBatch, TextEncoder
from training import plots
from training.checkpoint import save_checkpoint
from training.data import DataError, load_split, prepare_split, read_manifest
from training.metrics import classification_report
from training.model import ModelConfig, RecurrentClassifier
from training.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on; the defaults train the default BBC News model."""

    data: str = "bbc"
    labels: str | None = None  # "a,b,c" or a file with one label per line (CSV: class i = line i)
    run_dir: str = "runs/news"
    # model
    cell: str = "gru"
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "mean"
    embedding_dim: int = 128
    hidden_size: int = 64
    dropout: float = 0.5
    word_dropout: float = 0.25  # training only: each token id becomes [UNK] with this probability
    # tokenizer
    max_len: int = 384
    vocab_size: int = 20000
    min_frequency: int = 2
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    patience: int = 4
    seed: int = 13
    max_minutes: float | None = None
    threads: int | None = 1  # torch intra-op threads (None: torch's default); 1 is robust on a shared CPU
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TrainingError(Exception):
    """A run cannot start or resume (message meant for the user)."""


@dataclass
class EarlyStopState:
    best_score: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


# ---------------------------------------------------------------- helpers


def seed_everything(seed: int, threads: int | None) -> None:
    """Same seed + same thread count on the same CPU -> bit-identical weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Length-bucketed batches: similar lengths together means little padding work.

    Training (``rng`` given): shuffle, sort inside pools of 50 batches, shuffle batch order.
    Evaluation: plain sort by length.
    """
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_tensors(
    encoded: EncodedBatch, rows: np.ndarray, word_dropout: float = 0.0, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice a length-bucketed batch; optionally replace real tokens by [UNK] (word dropout).

    Word dropout regularises the large embedding table that a small corpus otherwise memorises;
    padding and lengths are untouched, so it needs nothing from the model at inference time.
    """
    lengths = encoded.lengths[rows]
    ids = np.array(encoded.input_ids[rows, : int(lengths.max())])
    if word_dropout > 0 and rng is not None:
        drop = (rng.random(ids.shape) < word_dropout) & (ids != PAD_ID)
        ids[drop] = UNK_ID
    return torch.from_numpy(ids), torch.from_numpy(lengths)


@torch.no_grad()
def evaluate(
    model: RecurrentClassifier, encoded: EncodedBatch, targets: np.ndarray, batch_size: int
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and predictions (in the split's original order)."""
    model.eval()
    preds = np.zeros(len(targets), dtype=np.int64)
    total_loss = 0.0
    for rows in make_batches(encoded.lengths, batch_size * 2, None):
        ids, lengths = batch_tensors(encoded, rows)
        logits = model(ids, lengths)
        total_loss += float(nn.functional.cross_entropy(logits, torch.from_numpy(targets[rows]), reduction="sum"))
        preds[rows] = logits.argmax(dim=-1).numpy()
    return total_loss / max(len(targets), 1), preds


def label_ids(labels: list[str], label_index: dict[str, int], where: str) -> np.ndarray:
    unknown = sorted(set(labels) - set(label_index))
    if unknown:
        raise DataError(f"{where}: unknown labels {unknown}")
    return np.array([label_index[label] for label in labels], dtype=np.int64)


# ---------------------------------------------------------------- the run


RESUMABLE_OVERRIDES = ("epochs", "max_minutes", "patience", "progress", "threads")


def train(config: TrainConfig, resume: bool = False, overrides: set[str] | None = None) -> dict[str, Any]:
    """Train (or resume) a run; returns the metrics report also written to metrics.json.

    On resume the run's settings come from ``last.pt``; only the fields named in ``overrides``
    (limited to the budget: ``RESUMABLE_OVERRIDES``) are taken from ``config``.
    """
    wall_start = time.perf_counter()
    run_dir = Path(config.run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    manifest_path = run_dir / "split" / "manifest.json"

    resume_state: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise TrainingError(f"{last_path}: nothing to resume (no last.pt in the run directory)")
        raw = torch.load(last_path, map_location="cpu", weights_only=True)
        resume_state = raw["resume"]
        stored = TrainConfig.from_dict(raw["train_config"])
        # the run's identity comes from the checkpoint; only the budget may change on resume
        changes = {name: getattr(config, name) for name in (overrides or set()) & set(RESUMABLE_OVERRIDES)}
        ignored = sorted(name for name in (overrides or set()) - set(RESUMABLE_OVERRIDES) - {"run_dir"}
                         if getattr(config, name) != getattr(stored, name))
        if ignored:
            logger.warning("--resume keeps the run's own settings; ignoring %s", ", ".join(ignored))
        config = replace(stored, **{"run_dir": config.run_dir, "progress": config.progress, **changes})
    elif last_path.exists():
        logger.warning("%s already holds a run; starting over (use --resume to continue it)", run_dir)

    seed_everything(config.seed, config.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_state is None:
        prepare_split(config.data, config.labels, manifest_path.parent, config.seed)
    manifest = read_manifest(manifest_path)
    labels: list[str] = manifest["labels"]
    label_index = {label: i for i, label in enumerate(labels)}
    texts = {name: load_split(manifest_path, name) for name in ("train", "val", "test")}

    if resume_state is None:
        tokenizer = train_tokenizer(texts["train"][0], vocab_size=config.vocab_size, min_frequency=config.min_frequency)
        tokenizer_json = tokenizer.to_str()
    else:
        tokenizer_json = raw["tokenizer_json"]
    (run_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    encoder = TextEncoder.from_json(tokenizer_json, config.max_len)
    encoded = {name: encoder.encode_batch(texts[name][0]) for name in texts}
    targets = {name: label_ids(texts[name][1], label_index, str(manifest_path.parent / f"{name}.jsonl")) for name in texts}
    truncated = {name: encoded[name].num_truncated for name in encoded}
    logger.info(
        "tokenizer: vocab %d; max_len %d truncates train %d/%d, val %d/%d, test %d/%d texts",
        encoder.vocab_size, config.max_len,
        truncated["train"], len(targets["train"]), truncated["val"], len(targets["val"]),
        truncated["test"], len(targets["test"]),
    )

    model_config = ModelConfig(
        vocab_size=encoder.vocab_size,
        num_labels=len(labels),
        cell=config.cell,  # type: ignore[arg-type]
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        pooling=config.pooling,  # type: ignore[arg-type]
    )
    model = RecurrentClassifier(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = EarlyStopState()
    start_epoch = 1
    if resume_state is not None:
        model.load_state_dict(raw["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        torch.set_rng_state(resume_state["torch_rng"])
        state = EarlyStopState(
            best_score=resume_state["best_score"],
            best_loss=resume_state["best_loss"],
            best_epoch=resume_state["best_epoch"],
            bad_epochs=resume_state["bad_epochs"],
            history=list(resume_state["history"]),
            train_seconds=resume_state["train_seconds"],
        )
        start_epoch = int(resume_state["epoch"]) + 1
        logger.info("resuming %s after epoch %d (best macro-F1 %.4f at epoch %d)",
                    run_dir, start_epoch - 1, state.best_score, state.best_epoch)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %d parameters", json.dumps(model_config.to_dict()), num_params)

    common = {"labels": labels, "tokenizer_json": tokenizer_json, "max_len": config.max_len,
              "data_manifest": str(manifest_path)}
    loss_fn = nn.CrossEntropyLoss()
    stop_reason = "max epochs"
    budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
    for epoch in range(start_epoch, config.epochs + 1):
        if state.bad_epochs >= config.patience:
            stop_reason = f"early stop (patience {config.patience})"
            break
        last_epoch_s = state.history[-1]["seconds"] if state.history else 0.0
        if state.train_seconds + last_epoch_s > budget_s:
            stop_reason = f"time budget ({config.max_minutes} min)"
            break
        epoch_start = time.perf_counter()
        model.train()
        epoch_rng = np.random.default_rng([config.seed, epoch])  # stateless per epoch: resume-safe
        batches = make_batches(encoded["train"].lengths, config.batch_size, epoch_rng)
        loss_sum, seen = 0.0, 0
        # disable=None: bars on a terminal only; in logs the per-epoch line below is the progress
        bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                   disable=None if config.progress else True)
        for rows in bar:
            ids, lengths = batch_tensors(encoded["train"], rows, config.word_dropout, epoch_rng)
            loss = loss_fn(model(ids, lengths), torch.from_numpy(targets["train"][rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            loss_sum += loss.item() * len(rows)
            seen += len(rows)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        val_loss, val_pred = evaluate(model, encoded["val"], targets["val"], config.batch_size)
        val = classification_report(targets["val"], val_pred, labels)
        seconds = time.perf_counter() - epoch_start
        state.train_seconds += seconds
        # ties on macro-F1 (common on a small validation set) go to the lower validation loss
        improved = val["macro_f1"] > state.best_score or (
            val["macro_f1"] == state.best_score and val_loss < state.best_loss
        )
        if improved:
            state.best_score, state.best_loss, state.best_epoch, state.bad_epochs = val["macro_f1"], val_loss, epoch, 0
        else:
            state.bad_epochs += 1
        state.history.append({
            "epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "seconds": seconds,
        })
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.4f, val macro-F1 %.4f, %.1fs%s",
            epoch, config.epochs, loss_sum / max(seen, 1), val_loss, val["accuracy"], val["macro_f1"], seconds,
            " (best)" if improved else "",
        )
        if improved:
            save_checkpoint(best_path, model, **common, metrics={"val": val, "epoch": epoch},
                            extra={"train_config": asdict(config)})
        save_checkpoint(last_path, model, **common, extra={
            "train_config": asdict(config),
            "resume": {
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "best_score": state.best_score,
                "best_loss": state.best_loss,
                "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs,
                "history": state.history,
                "train_seconds": state.train_seconds,
            },
        })
    else:
        if state.bad_epochs >= config.patience:
            stop_reason = f"early stop (patience {config.patience})"

    if not best_path.is_file():
        raise TrainingError(f"{run_dir}: no epoch completed, so there is no best.pt")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    test_loss, test_pred = evaluate(model, encoded["test"], targets["test"], config.batch_size)
    report = classification_report(targets["test"], test_pred, labels)
    report.update({
        "split": "test",
        "test_loss": test_loss,
        "test_truncated": truncated["test"],
        "truncated": {name: truncated[name] for name in truncated},
        "best_epoch": state.best_epoch,
        "best_val_macro_f1": state.best_score,
        "epochs_run": len(state.history),
        "stop_reason": stop_reason,
        "train_seconds": state.train_seconds,
        "wall_seconds_this_invocation": time.perf_counter() - wall_start,
        "num_parameters": num_params,
        "torch_threads": torch.get_num_threads(),
        "model_config": model_config.to_dict(),
        "train_config": asdict(config),
        "data": {"manifest": str(manifest_path), "labels": labels, **manifest["counts"],
                 "train": len(targets["train"]), "val": len(targets["val"]), "test": len(targets["test"])},
        "history": state.history,
    })
    save_checkpoint(best_path, model, **common, metrics=report, extra={"train_config": asdict(config)})
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plots.plot_training_curves(state.history, run_dir / "training_curves.png")
    plots.plot_confusion_matrix(report["confusion_matrix"], labels, run_dir / "confusion_matrix.png")
    logger.info(
        "test: accuracy %.4f, macro-F1 %.4f (%d texts, %d truncated); best epoch %d; %s; training %.1fs",
        report["accuracy"], report["macro_f1"], report["num_examples"], truncated["test"],
        state.best_epoch, stop_reason, state.train_seconds,
    )
    return report
