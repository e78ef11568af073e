"""Tiny real (PyTorch -> ONNX) models, checkpoints and bundles for tests. Nothing is trained.

Usage::

    ckpt = make_tiny_checkpoint(tmp_path, cell="lstm", bidirectional=True)   # Path to a .pt
    bundle = make_tiny_bundle(tmp_path / "models", name="tiny", cell="gru")  # <repo>/tiny/1

Checkpoints record a real saved split (training.data.prepare_split on a generated JSONL), so
the parity suite runs over a test split exactly as it does for a trained model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint import save_checkpoint
from training.model import ModelConfig, RecurrentClassifier
from training.tokenizer import train_tokenizer

LABELS = ("business", "sport", "tech")
_TOPIC_WORDS = {
    "business": "market shares bank profits company forecast investors economy prices trade",
    "sport": "striker scored team match coach players cup final goal season",
    "tech": "phone chip camera software update security browser internet computer data",
}
_FILLER = "the a and of to in on as its after with for new".split()


def corpus(per_label: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic labelled sentences of varied length (4..40 words), distinct texts."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for label, words in _TOPIC_WORDS.items():
        vocab = words.split() + _FILLER
        for i in range(per_label):
            length = 4 + (i * 7) % 37
            picks = torch.randint(len(vocab), (length,), generator=generator).tolist()
            records.append({"text": f"{label} {i} " + " ".join(vocab[p] for p in picks), "label": label})
    return records


def make_tiny_checkpoint(
    directory: str | Path,
    *,
    cell: str = "gru",
    bidirectional: bool = True,
    num_layers: int = 1,
    pooling: str = "last",
    hidden_size: int = 8,
    embedding_dim: int = 8,
    max_len: int = 24,
    seed: int = 0,
    with_split: bool = True,
    file_name: str | None = None,
    fit_steps: int = 0,
) -> Path:
    """Random weights + a tokenizer trained on the tiny corpus, saved with save_checkpoint.

    ``fit_steps`` > 0 runs a few full-batch Adam steps on the corpus so logits have real
    margins (INT8 argmax agreement is meaningless on near-tied random logits).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records = corpus(seed=seed)
    tokenizer = train_tokenizer([r["text"] for r in records], vocab_size=500, min_frequency=1)
    manifest = None
    if with_split:
        from training.data import prepare_split

        data_path = directory / "tiny.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        manifest = str(prepare_split(str(data_path), list(LABELS), directory / "split", seed=seed))
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        num_labels=len(LABELS),
        cell=cell,  # type: ignore[arg-type]
        embedding_dim=embedding_dim,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=0.0,
        pooling=pooling,  # type: ignore[arg-type]
    )
    model = RecurrentClassifier(config)
    if fit_steps:
        fit(model, tokenizer.to_str(), max_len, records, fit_steps)
    model.eval()
    name = file_name or f"tiny-{cell}-{'bi' if bidirectional else 'uni'}-{num_layers}-{pooling}.pt"
    return save_checkpoint(
        directory / name,
        model,
        labels=list(LABELS),
        tokenizer_json=tokenizer.to_str(),
        max_len=max_len,
        metrics={"test": {"accuracy": 0.0}, "note": "random weights, untrained"},
        data_manifest=manifest,
    )


def fit(model: RecurrentClassifier, tokenizer_json: str, max_len: int, records: list[dict[str, str]], steps: int) -> None:
    from bundle.tokenization import TextEncoder

    batch = TextEncoder.from_json(tokenizer_json, max_len).encode_batch([r["text"] for r in records])
    ids, lengths = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.lengths)
    targets = torch.tensor([LABELS.index(r["label"]) for r in records])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(ids, lengths), targets).backward()
        optimizer.step()


def make_tiny_bundle(
    repository: str | Path,
    name: str = "tiny",
    cell: str = "gru",
    *,
    bidirectional: bool = True,
    num_layers: int = 1,
    pooling: str = "last",
    quantize: str | None = None,
    version: int | None = None,
    workdir: str | Path | None = None,
    fit_steps: int = 0,
    hidden_size: int = 8,
    embedding_dim: int = 8,
    max_len: int = 24,
) -> Path:
    """Export and publish a tiny random model through the real export pipeline; returns <repo>/<name>/<v>.

    The checkpoint lives in ``workdir`` (default: ``<repository>/../tiny-checkpoints``) and is
    recorded in the card's ``source`` so ``textclf parity`` finds it.
    """
    from export.cli import export_bundle

    workdir = Path(workdir) if workdir else Path(repository).parent / "tiny-checkpoints"
    checkpoint = make_tiny_checkpoint(workdir, cell=cell, bidirectional=bidirectional,
                                      num_layers=num_layers, pooling=pooling, fit_steps=fit_steps,
                                      hidden_size=hidden_size, embedding_dim=embedding_dim, max_len=max_len)
    return export_bundle(checkpoint, repository, name, version=version, quantize=quantize,
                         providers=["CPUExecutionProvider"])
