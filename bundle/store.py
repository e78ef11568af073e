"""Publishing and verifying bundles in a model repository: ``<repo>/<name>/<version>/``.

Publishing is atomic: files are written to a hidden temporary directory inside the repository
and renamed into place, so a reader sees either no version or a complete one. Hidden entries
(names starting with '.') are never treated as models or versions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bundle.card import BUNDLE_FILES, CARD_FILE, HASHED_FILES, MODEL_FILE, TOKENIZER_FILE, ModelCard, card_problems
from bundle.onnx_external import MalformedOnnx, external_tensors

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
    """Check that a bundle is complete and untampered; return its card or raise BundleError.

    model.json must match the card schema (``bundle.card.card_problems``); every file in
    ``HASHED_FILES`` (and any other file the card lists in ``sha256``) must match its digest; the
    answer-relevant card fields (labels, max_len) must match ``answers_sha256``."""
    bundle_dir = Path(path)
    missing = [f for f in BUNDLE_FILES if not (bundle_dir / f).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle_dir} is missing {', '.join(missing)}")
    try:
        data = json.loads((bundle_dir / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {bundle_dir}: unreadable {CARD_FILE}: {exc}") from exc
    problems = card_problems(data)
    if problems:
        raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} does not match the card schema: {'; '.join(problems)}")
    card = ModelCard.from_dict(data)
    for file_name in sorted(set(HASHED_FILES) | set(card.sha256)):
        expected = card.sha256.get(file_name)
        if not expected:
            raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} has no sha256 for {file_name}")
        if Path(file_name).name != file_name or file_name in (CARD_FILE, "", ".", ".."):
            raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} lists a sha256 for {file_name[:80]!r}, "
                              "which is not a bundle file name")
        file_path = bundle_dir / file_name
        if not file_path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {file_name} (listed in {CARD_FILE})")
        if sha256_file(file_path) != expected:
            raise BundleError(f"bundle {bundle_dir}: sha256 mismatch for {file_name}")
    _refuse_external_data(bundle_dir)
    if card.answers_digest() != card.answers_sha256:
        raise BundleError(f"bundle {bundle_dir}: {CARD_FILE} labels/max_len do not match answers_sha256 "
                          "(the label list or max_len was edited after publishing)")
    if require_parity and not card.parity_passed:
        state = "missing" if card.parity is None else "failed"
        raise BundleError(f"bundle {bundle_dir}: parity report {state}")
    return card


def _refuse_external_data(bundle_dir: Path) -> None:
    """The sha256 covers model.onnx only: a model whose weights live in ONNX external-data files
    is refused (a malformed model.onnx is left for onnxruntime to reject with its own error)."""
    try:
        external = external_tensors((bundle_dir / MODEL_FILE).read_bytes())
    except MalformedOnnx:
        return
    if external:
        shown = ", ".join(name[:40] for name in external[:3]) + (", ..." if len(external) > 3 else "")
        raise BundleError(f"bundle {bundle_dir}: {MODEL_FILE} keeps {len(external)} tensor(s) in ONNX external data "
                          f"({shown}); only a self-contained {MODEL_FILE} is served (external files are not "
                          "covered by its sha256)")


def publish_bundle(
    repository: str | Path,
    card: ModelCard,
    model_path: str | Path,
    tokenizer_path: str | Path,
    *,
    version: int | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Copy a model + tokenizer (+ ``extra_files``: bundle file name -> source path, e.g. further
    ``HASHED_FILES``) into ``<repository>/<card.name>/<version>/`` atomically.

    ``version=None`` picks the next free version. sha256 digests (of every copied file) and
    ``answers_sha256`` are (re)computed here so the card always matches. Returns the directory.
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
    sources = {MODEL_FILE: Path(model_path), TOKENIZER_FILE: Path(tokenizer_path),
               **{name: Path(source) for name, source in (extra_files or {}).items()}}
    unknown = [name for name in sources if Path(name).name != name or name == CARD_FILE]
    if unknown:
        raise BundleError(f"not bundle file names: {', '.join(unknown)}")
    absent = [name for name in HASHED_FILES if name not in sources]
    if absent:  # a file verification requires: pass it in extra_files
        raise BundleError(f"publishing {card.name} needs {', '.join(absent)} (bundle.card.HASHED_FILES)")
    card.version = version
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        for name, source in sources.items():  # hash the copies: what is published is what is hashed
            shutil.copyfile(source, staging / name)
        card.sha256 = {name: sha256_file(staging / name) for name in sources}
        card.answers_sha256 = card.answers_digest()
        problems = card_problems(card.to_dict())
        if problems:  # never publish what verification would refuse
            raise BundleError(f"card for {card.name} does not match the card schema: {'; '.join(problems)}")
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
