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
    cell: str = "lstm"  # the product's cell; bench/train_cells.py decides on validation whether another beats it
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "max"  # chosen on validation over 3 seeds: bench/results/train_cells.md
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
    seed: int = 13  # weights, batch order, word dropout
    split_seed: int = 13  # the train/val/test split: several training seeds share one split
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
    """Early stopping on validation macro-F1 (ties go to the lower validation loss), plus history.

    Round-trips through ``last.pt`` as a plain dict (``to_dict`` / ``from_dict``) so that a
    resumed run stops exactly where an uninterrupted one would.
    """

    best_score: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0

    def update(self, epoch: int, macro_f1: float, loss: float) -> bool:
        """Record one epoch's validation score; True when it is the new best."""
        improved = macro_f1 > self.best_score or (macro_f1 == self.best_score and loss < self.best_loss)
        if improved:
            self.best_score, self.best_loss, self.best_epoch, self.bad_epochs = macro_f1, loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EarlyStopState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.history = list(state.history)
        return state


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


@dataclass
class Run:
    """What the steps of a run share: its settings, model, optimiser and early-stop state."""

    config: TrainConfig
    run_dir: Path
    model: RecurrentClassifier
    optimizer: torch.optim.Optimizer
    state: EarlyStopState
    start_epoch: int
    labels: list[str]
    tokenizer_json: str
    manifest_path: Path

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"labels": self.labels, "tokenizer_json": self.tokenizer_json, "max_len": self.config.max_len,
                "data_manifest": str(self.manifest_path)}


@dataclass
class TrainingData:
    """The training and validation splits, encoded. The test split is not here on purpose:
    only ``evaluate_on_test`` reads it, once, for the final model."""

    encoded: dict[str, EncodedBatch]
    targets: dict[str, np.ndarray]


def train(
    config: TrainConfig, resume: bool = False, overrides: set[str] | None = None, *, final_test: bool = True
) -> dict[str, Any]:
    """Train (or resume) a run; returns the report also written to metrics.json.

    Steps: start or resume -> data (train and validation only) -> epochs (early-stopped on
    validation) -> final report. With ``final_test`` the report is the one test evaluation of
    the best checkpoint (``evaluate_on_test``); without it (model selection) the test split is
    never read and the report holds the best checkpoint's validation scores.
    On resume the run's settings come from ``last.pt``; only the fields named in ``overrides``
    (limited to the budget: ``RESUMABLE_OVERRIDES``) are taken from ``config``.
    """
    wall_start = time.perf_counter()
    run = start_or_resume(config, resume, overrides)
    data = load_training_data(run)
    stop_reason = run_epochs(run, data)
    return final_report(run, data, stop_reason, time.perf_counter() - wall_start, final_test)


def start_or_resume(config: TrainConfig, resume: bool, overrides: set[str] | None) -> Run:
    """A fresh run (split + tokenizer from the training split) or the state of ``last.pt``."""
    run_dir = Path(config.run_dir)
    last_path = run_dir / "last.pt"
    manifest_path = run_dir / "split" / "manifest.json"
    raw: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise TrainingError(f"{last_path}: nothing to resume (no last.pt in the run directory)")
        raw = torch.load(last_path, map_location="cpu", weights_only=True)
        config = resumed_config(config, TrainConfig.from_dict(raw["train_config"]), overrides or set())
    elif last_path.exists():
        logger.warning("%s already holds a run; starting over (use --resume to continue it)", run_dir)

    seed_everything(config.seed, config.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if raw is None:
        prepare_split(config.data, config.labels, manifest_path.parent, config.split_seed)
    labels: list[str] = read_manifest(manifest_path)["labels"]
    if raw is None:
        train_texts = load_split(manifest_path, "train")[0]
        tokenizer_json = train_tokenizer(train_texts, vocab_size=config.vocab_size,
                                         min_frequency=config.min_frequency).to_str()
    else:
        tokenizer_json = raw["tokenizer_json"]
    (run_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")

    model = RecurrentClassifier(ModelConfig(
        vocab_size=TextEncoder.from_json(tokenizer_json, config.max_len).vocab_size,
        num_labels=len(labels),
        cell=config.cell,  # type: ignore[arg-type]
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        pooling=config.pooling,  # type: ignore[arg-type]
    ))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = Run(config, run_dir, model, optimizer, EarlyStopState(), 1, labels, tokenizer_json, manifest_path)
    if raw is not None:
        resume_state = raw["resume"]
        model.load_state_dict(raw["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        torch.set_rng_state(resume_state["torch_rng"])
        run.state = EarlyStopState.from_dict(resume_state["early_stop"])
        run.start_epoch = int(resume_state["epoch"]) + 1
        logger.info("resuming %s after epoch %d (best macro-F1 %.4f at epoch %d)",
                    run_dir, run.start_epoch - 1, run.state.best_score, run.state.best_epoch)
    logger.info("model: %s, %d parameters", json.dumps(model.config.to_dict()), num_parameters(model))
    return run


def resumed_config(given: TrainConfig, stored: TrainConfig, overrides: set[str]) -> TrainConfig:
    """The run's identity comes from the checkpoint; only the budget may change on resume."""
    changes = {name: getattr(given, name) for name in overrides & set(RESUMABLE_OVERRIDES)}
    ignored = sorted(name for name in overrides - set(RESUMABLE_OVERRIDES) - {"run_dir"}
                     if getattr(given, name) != getattr(stored, name))
    if ignored:
        logger.warning("--resume keeps the run's own settings; ignoring %s", ", ".join(ignored))
    return replace(stored, **{"run_dir": given.run_dir, "progress": given.progress, **changes})


def load_training_data(run: Run) -> TrainingData:
    """Encode the training and validation splits (never the test split)."""
    encoder = TextEncoder.from_json(run.tokenizer_json, run.config.max_len)
    label_index = {label: i for i, label in enumerate(run.labels)}
    encoded: dict[str, EncodedBatch] = {}
    targets: dict[str, np.ndarray] = {}
    for name in ("train", "val"):
        texts, labels = load_split(run.manifest_path, name)
        encoded[name] = encoder.encode_batch(texts)
        targets[name] = label_ids(labels, label_index, str(run.manifest_path.parent / f"{name}.jsonl"))
    logger.info("tokenizer: vocab %d; max_len %d truncates train %d/%d, val %d/%d texts",
                encoder.vocab_size, run.config.max_len, encoded["train"].num_truncated, len(targets["train"]),
                encoded["val"].num_truncated, len(targets["val"]))
    return TrainingData(encoded, targets)


def run_epochs(run: Run, data: TrainingData) -> str:
    """Train until max epochs, patience or the time budget; returns the stop reason."""
    config, state = run.config, run.state
    budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
    for epoch in range(run.start_epoch, config.epochs + 1):
        if state.bad_epochs >= config.patience:
            return f"early stop (patience {config.patience})"
        last_epoch_s = state.history[-1]["seconds"] if state.history else 0.0
        if state.train_seconds + last_epoch_s > budget_s:
            return f"time budget ({config.max_minutes} min)"
        run_epoch(run, data, epoch)
    if state.bad_epochs >= config.patience:
        return f"early stop (patience {config.patience})"
    return "max epochs"


def run_epoch(run: Run, data: TrainingData, epoch: int) -> None:
    """One pass over the training split, a validation pass, and the two checkpoints."""
    config, model, state = run.config, run.model, run.state
    epoch_start = time.perf_counter()
    model.train()
    epoch_rng = np.random.default_rng([config.seed, epoch])  # stateless per epoch: resume-safe
    batches = make_batches(data.encoded["train"].lengths, config.batch_size, epoch_rng)
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, seen = 0.0, 0
    # disable=None: bars on a terminal only; in logs the per-epoch line below is the progress
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
               disable=None if config.progress else True)
    for rows in bar:
        ids, lengths = batch_tensors(data.encoded["train"], rows, config.word_dropout, epoch_rng)
        loss = loss_fn(model(ids, lengths), torch.from_numpy(data.targets["train"][rows]))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        run.optimizer.step()
        loss_sum += loss.item() * len(rows)
        seen += len(rows)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    bar.close()
    val_loss, val_pred = evaluate(model, data.encoded["val"], data.targets["val"], config.batch_size)
    val = classification_report(data.targets["val"], val_pred, run.labels)
    seconds = time.perf_counter() - epoch_start
    state.train_seconds += seconds
    improved = state.update(epoch, val["macro_f1"], val_loss)
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
        save_checkpoint(run.best_path, model, **run.checkpoint_fields(),
                        metrics={"split": "val", "epoch": epoch, **val}, extra={"train_config": asdict(config)})
    save_checkpoint(run.last_path, model, **run.checkpoint_fields(), extra={
        "train_config": asdict(config),
        "resume": {"epoch": epoch, "optimizer": run.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                   "early_stop": state.to_dict()},
    })


def final_report(run: Run, data: TrainingData, stop_reason: str, wall_seconds: float, final_test: bool) -> dict[str, Any]:
    """Validation report of the best checkpoint; with ``final_test`` its one test evaluation."""
    if not run.best_path.is_file():
        raise TrainingError(f"{run.run_dir}: no epoch completed, so there is no best.pt")
    run.model.load_state_dict(torch.load(run.best_path, map_location="cpu", weights_only=True)["state_dict"])
    val_loss, val_pred = evaluate(run.model, data.encoded["val"], data.targets["val"], run.config.batch_size)
    val = classification_report(data.targets["val"], val_pred, run.labels)
    manifest = read_manifest(run.manifest_path)
    state = run.state
    report: dict[str, Any] = {
        "split": "val",
        "val": {**val, "loss": val_loss},
        "truncated": {"train": data.encoded["train"].num_truncated, "val": data.encoded["val"].num_truncated},
        "best_epoch": state.best_epoch,
        "best_val_macro_f1": state.best_score,
        "epochs_run": len(state.history),
        "stop_reason": stop_reason,
        "train_seconds": state.train_seconds,
        "wall_seconds_this_invocation": wall_seconds,
        "num_parameters": num_parameters(run.model),
        "torch_threads": torch.get_num_threads(),
        "model_config": run.model.config.to_dict(),
        "train_config": asdict(run.config),
        "data": {"manifest": str(run.manifest_path), "labels": run.labels, **manifest["counts"],
                 "near_duplicates": manifest.get("near_duplicates"),
                 "train": len(data.targets["train"]), "val": len(data.targets["val"]),
                 "test": manifest["files"]["test"]["count"]},
        "history": state.history,
    }
    if final_test:
        report = evaluate_on_test(run.run_dir, report)
    else:
        (run.run_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        plots.plot_training_curves(state.history, run.run_dir / "training_curves.png")
    logger.info("validation (best epoch %d): accuracy %.4f, macro-F1 %.4f; %s; training %.1fs",
                state.best_epoch, val["accuracy"], val["macro_f1"], stop_reason, state.train_seconds)
    return report


def evaluate_on_test(run_dir: str | Path, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """THE one reader of the test split: score ``best.pt`` on it, once, for the final model.

    Writes the test scores (with a 95 % Wilson interval for accuracy) into ``metrics.json`` and
    ``best.pt`` and draws the plots. Model selection (bench/train_cells.py) trains with
    ``final_test=False`` and calls this only for the configuration it chose.
    """
    run_dir = Path(run_dir)
    if report is None:
        report = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(best["train_config"])
    model = RecurrentClassifier(ModelConfig.from_dict(best["model_config"]))
    model.load_state_dict(best["state_dict"])
    manifest_path = Path(best["data_manifest"])
    labels = list(best["labels"])
    texts, names = load_split(manifest_path, "test")
    encoded = TextEncoder.from_json(best["tokenizer_json"], int(best["max_len"])).encode_batch(texts)
    targets = label_ids(names, {label: i for i, label in enumerate(labels)}, str(manifest_path.parent / "test.jsonl"))
    test_loss, test_pred = evaluate(model, encoded, targets, config.batch_size)
    test = classification_report(targets, test_pred, labels)
    correct = int(round(test["accuracy"] * test["num_examples"]))
    report = {
        **report, **test, "split": "test",
        "accuracy_ci95": wilson_interval(correct, test["num_examples"]),
        "test_loss": test_loss,
        "test_truncated": encoded.num_truncated,
        "truncated": {**report.get("truncated", {}), "test": encoded.num_truncated},
    }
    save_checkpoint(run_dir / "best.pt", model, labels=labels, tokenizer_json=best["tokenizer_json"],
                    max_len=int(best["max_len"]), data_manifest=best["data_manifest"], metrics=report,
                    extra={"train_config": best["train_config"]})
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plots.plot_training_curves(report["history"], run_dir / "training_curves.png")
    plots.plot_confusion_matrix(report["confusion_matrix"], labels, run_dir / "confusion_matrix.png")
    low, high = report["accuracy_ci95"]
    logger.info("test (read once, final model): accuracy %.4f (95%% CI %.4f-%.4f), macro-F1 %.4f (%d texts, %d truncated)",
                test["accuracy"], low, high, test["macro_f1"], test["num_examples"], encoded.num_truncated)
    return report


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> list[float]:
    """95 % Wilson score interval of a proportion (sane at accuracies near 1, unlike the normal one)."""
    if total == 0:
        return [0.0, 1.0]
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
