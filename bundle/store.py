"""Publishing and verifying bundles in a model repository: ``<repo>/<name>/<version>/``.

Publishing is atomic: files are written to a hidden temporary directory inside the repository
and renamed into place, so a reader sees either no version or a complete one. Hidden entries
(names starting with '.') are never treated as models or versions.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from bundle.card import BUNDLE_FILES, CARD_FILE, GOLDEN_FILE, MODEL_FILE, OPTIONAL_HASHED_FILES, TOKENIZER_FILE, ModelCard

logger = logging.getLogger(__name__)

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")


class BundleError(Exception):
    """A bundle is missing, malformed or failed verification. The message says why."""


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise BundleError(f"invalid model name {name[:80]!r}: must match {MODEL_NAME_RE.pattern}")
    return name


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_models(repository: str | Path) -> list[str]:
    root = Path(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and MODEL_NAME_RE.fullmatch(p.name))


def list_versions(repository: str | Path, name: str) -> list[int]:
    model_dir = Path(repository) / validate_model_name(name)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_RE.fullmatch(p.name))


def verify_bundle(path: str | Path, *, require_parity: bool = True) -> ModelCard:
    """Check that a bundle is complete and untampered; return its card or raise BundleError."""
    bundle_dir = Path(path)
    missing = [f for f in BUNDLE_FILES if not (bundle_dir / f).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle_dir} is missing {', '.join(missing)}")
    try:
        card = ModelCard.load(bundle_dir / CARD_FILE)
        if not isinstance(card.sha256, dict) or not isinstance(card.labels, list):
            raise TypeError("sha256 must be an object and labels a list")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"bundle {bundle_dir}: unreadable {CARD_FILE}: {exc}") from exc
    unknown = sorted(set(card.sha256) - {MODEL_FILE, TOKENIZER_FILE, *OPTIONAL_HASHED_FILES})
    if unknown:
        raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} lists unknown files {unknown[:5]}")
    listed_optional = [f for f in OPTIONAL_HASHED_FILES if f in card.sha256]
    for file_name in (MODEL_FILE, TOKENIZER_FILE, *listed_optional):
        expected = card.sha256.get(file_name)
        if not expected:
            raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} has no sha256 for {file_name}")
        if not (bundle_dir / file_name).is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {file_name}")
        actual = sha256_file(bundle_dir / file_name)
        if actual != expected:
            raise BundleError(f"bundle {bundle_dir}: sha256 mismatch for {file_name}")
    if len(card.labels) < 2 or len(set(card.labels)) != len(card.labels):
        raise BundleError(f"bundle {bundle_dir}: labels must be >= 2 distinct names")
    if require_parity and not card.parity_passed:
        state = "missing" if card.parity is None else "failed"
        raise BundleError(f"bundle {bundle_dir}: parity report {state}")
    return card


def publish_bundle(
    repository: str | Path,
    card: ModelCard,
    model_path: str | Path,
    tokenizer_path: str | Path,
    *,
    version: int | None = None,
    golden_path: str | Path | None = None,
) -> Path:
    """Copy a model + tokenizer (+ golden.json) into ``<repository>/<card.name>/<version>/`` atomically.

    ``version=None`` picks the next free version. sha256 digests are (re)computed here so the
    card always matches the files. Returns the published directory.
    """
    repo = Path(repository)
    validate_model_name(card.name)
    model_dir = repo / card.name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        existing = list_versions(repo, card.name)
        version = (existing[-1] + 1) if existing else 1
    if version < 1:
        raise BundleError("version must be a positive integer")
    target = model_dir / str(version)
    if target.exists():
        raise BundleError(f"{target} already exists; versions are immutable")
    card.version = version
    card.sha256 = {MODEL_FILE: sha256_file(model_path), TOKENIZER_FILE: sha256_file(tokenizer_path)}
    if golden_path is not None:
        card.sha256[GOLDEN_FILE] = sha256_file(golden_path)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        shutil.copyfile(model_path, staging / MODEL_FILE)
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        if golden_path is not None:
            shutil.copyfile(golden_path, staging / GOLDEN_FILE)
        write_card(staging, card)
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("published bundle %s", target)
    return target


def write_card(bundle_dir: str | Path, card: ModelCard) -> None:
    """Atomically replace model.json (used by publish and by the parity CLI)."""
    bundle_dir = Path(bundle_dir)
    fd, tmp = tempfile.mkstemp(prefix=".model.json.", dir=bundle_dir)
    os.fchmod(fd, 0o644)  # mkstemp makes it 0600: a service running as another user must read it
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(card.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, bundle_dir / CARD_FILE)


def clean_stale_staging(repository: str | Path) -> int:
    """Remove staging directories left by a publisher that was killed; returns how many."""
    removed = 0
    for model in list_models(repository):
        for entry in (Path(repository) / model).glob(".staging-*"):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed
