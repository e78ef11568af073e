"""Data loading, bad-data errors, de-duplication and the saved stratified split."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from training.data import (
    DataError,
    Example,
    deduplicate,
    load_bbc,
    near_deduplicate,
    load_dataset,
    load_split,
    prepare_split,
    read_manifest,
    stratified_split,
)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def balanced_rows(per_class: int = 10, labels: tuple[str, ...] = ("a", "b", "c")) -> list[dict]:
    return [{"text": f"text {label} number {i}", "label": label} for label in labels for i in range(per_class)]


# ---------------------------------------------------------------- BBC News


def test_bbc_counts_raw_and_deduplicated() -> None:
    dataset = load_bbc()
    assert len(dataset.examples) == 2225
    assert dataset.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert Counter(ex.label for ex in dataset.examples) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401,
    }
    kept, removed = deduplicate(dataset.examples)
    assert (len(kept), removed) == (2125, 100)
    near_kept, near = near_deduplicate(kept)  # word 5-gram overlap >= 0.8 (docs/training.md)
    assert (len(near_kept), len(near)) == (2058, 67)
    assert all(pair.dropped.label == pair.kept.label for pair in near)
    # the one Windows-1252 file decodes its pound sign instead of dropping it
    assert all("\ufffd" not in ex.text for ex in dataset.examples)


# ---------------------------------------------------------------- CSV / JSONL parsing


def test_csv_ag_news_layout_with_and_without_header(tmp_path: Path) -> None:
    body = '3,"Title one","Description, with comma"\n1,Second,"multi\nline"\n2,Third,desc\n'
    plain = load_dataset(str(write(tmp_path / "plain.csv", body)), "world,sports,business")
    assert [(ex.text, ex.label) for ex in plain.examples] == [
        ("Title one Description, with comma", "business"),
        ("Second multi\nline", "world"),
        ("Third desc", "sports"),
    ]
    # the quoted field spans lines 2-3, so the next record starts on line 4
    assert plain.examples[2].where.endswith("plain.csv:4")
    headed = load_dataset(str(write(tmp_path / "headed.csv", "class,title,description\n" + body)), "world,sports,business")
    assert [ex.text for ex in headed.examples] == [ex.text for ex in plain.examples]
    assert headed.examples[0].where.endswith("headed.csv:2")


def test_label_map_file(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.txt", "world\nsports\n\n")
    data = write(tmp_path / "d.csv", "2,t,d\n1,t2,d2\n")
    dataset = load_dataset(str(data), str(labels))
    assert dataset.labels == ["world", "sports"]
    assert [ex.label for ex in dataset.examples] == ["sports", "world"]


def test_jsonl_labels_inferred_or_mapped(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": "Привет мир", "label": "ru"}, {"text": "hello", "label": "en"}])
    dataset = load_dataset(str(path))
    assert dataset.labels == ["en", "ru"]
    assert dataset.examples[0].text == "Привет мир"
    numeric = jsonl(tmp_path / "n.jsonl", [{"text": "x", "label": 2}])
    assert load_dataset(str(numeric), "neg,pos").examples[0].label == "pos"


# ---------------------------------------------------------------- bad data: file + line


@pytest.mark.parametrize(
    ("name", "content", "labels", "line", "fragment"),
    [
        ("cols.csv", "1,a,b\n2,only-title\n", "x,y", 2, "expected 3 columns"),
        ("empty.csv", '1,a,b\n2,a,b2\n1," ",""\n', "x,y", 3, "empty text"),
        ("unknown.csv", "1,a,b\n3,c,d\n", "x,y", 2, "unknown label '3'"),
        ("notint.csv", "1,a,b\nx,c,d\n", "x,y", 2, "unknown label 'x'"),
        ("bytes.csv", b"1,a,b\n2,c,d\n1,caf\xe9,x\n", "x,y", 3, "not valid UTF-8"),
        ("missing.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', None, 2, "missing field 'label'"),
        ("empty.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "  ", "label": "x"}\n', None, 3, "empty text"),
        ("unknown.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "z"}\n', "x,y", 2, "unknown label 'z'"),
        ("broken.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', None, 2, "invalid JSON"),
        ("bytes.jsonl", b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "x"}\n', None, 2, "not valid UTF-8"),
    ],
)
def test_bad_data_names_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, labels: str | None, line: int, fragment: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_dataset(str(path), labels)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert fragment in message


def test_csv_without_label_map_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "1,a,b\n")
    with pytest.raises(DataError, match="label map"):
        load_dataset(str(path))


def test_conflicting_labels_name_both_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [
        {"text": "same  text", "label": "a"}, {"text": "other", "label": "b"}, {"text": "same text\n", "label": "b"},
    ])
    with pytest.raises(DataError) as info:
        deduplicate(load_dataset(str(path)).examples)
    assert f"{path}:3:" in str(info.value) and f"{path}:1" in str(info.value)


def test_class_too_small_to_split(tmp_path: Path) -> None:
    rows = balanced_rows(10, ("a", "b")) + [{"text": "lonely 1", "label": "c"}, {"text": "lonely 2", "label": "c"}]
    path = jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_split(str(path), None, tmp_path / "split", seed=1)
    message = str(info.value)
    assert f"{path}:21" in message and "'c' has 2 example(s)" in message


# ---------------------------------------------------------------- dedup and split


def test_dedup_ignores_whitespace_differences_and_keeps_first() -> None:
    examples = [Example("a  b", "x", "f:1"), Example(" a b\n", "x", "f:2"), Example("a b c", "x", "f:3"), Example("a\tb", "x", "f:4")]
    kept, removed = deduplicate(examples)
    assert [ex.where for ex in kept] == ["f:1", "f:3"]
    assert removed == 2


ARTICLE = ("The central bank raised its key interest rate by half a point on Thursday, the third rise this "
           "year, saying that inflation in services and wages had not yet come down as fast as it had expected "
           "and that it would act again if prices kept climbing through the spring")


def test_near_copies_are_removed_distinct_texts_kept() -> None:
    lightly_edited = ARTICLE.replace("Thursday", "Friday") + " Shares fell."  # shares >= 80 % of its 5-grams
    quoted = "Breaking: " + ARTICLE  # the whole article inside a longer text
    other = ("The striker scored twice in the second half as the home side came back from two goals down "
             "to win the cup final in front of a record crowd on Saturday")
    same_topic = ("The central bank kept its key interest rate unchanged on Thursday and said inflation was "
                  "falling faster than expected in services")  # shares words, not 5-grams
    examples = [Example(ARTICLE, "business", "f:1"), Example(other, "sport", "f:2"),
                Example(lightly_edited, "business", "f:3"), Example(same_topic, "business", "f:4"),
                Example(quoted, "business", "f:5"), Example("too short", "sport", "f:6")]
    kept, dropped = near_deduplicate(examples)
    assert [ex.where for ex in kept] == ["f:1", "f:2", "f:4", "f:6"]
    assert [(d.dropped.where, d.kept.where) for d in dropped] == [("f:3", "f:1"), ("f:5", "f:1")]
    assert all(d.overlap >= 0.8 for d in dropped)
    # deterministic: the first of a group is kept, whatever the later order
    assert near_deduplicate(examples)[0] == kept
    assert [ex.where for ex in near_deduplicate([examples[2], *examples[:2]])[0]] == ["f:3", "f:2"]


def test_near_copy_never_crosses_the_split(tmp_path: Path) -> None:
    """Many near copies of one article: after the split at most one of them is left anywhere."""
    rows = balanced_rows(20)
    rows += [{"text": ARTICLE + f" Update {i}.", "label": "a"} for i in range(12)]
    manifest_path = prepare_split(str(jsonl(tmp_path / "d.jsonl", rows)), None, tmp_path / "s", seed=3)
    manifest = read_manifest(manifest_path)
    assert manifest["counts"]["near_duplicates_removed"] == 11 and manifest["counts"]["deduplicated"] == 61
    assert manifest["near_duplicates"]["threshold"] == 0.8 and manifest["near_duplicates"]["shingle_words"] == 5
    copies = [name for name in ("train", "val", "test")
              for text in load_split(manifest_path, name)[0] if text.startswith(ARTICLE[:40])]
    assert len(copies) == 1


def test_split_is_stratified_disjoint_and_complete() -> None:
    examples = [Example(f"{label} {i}", label, f"f:{i}") for label, n in (("a", 50), ("b", 30), ("c", 20)) for i in range(n)]
    splits = stratified_split(examples, ["a", "b", "c"], seed=3)
    counts = {name: Counter(ex.label for ex in rows) for name, rows in splits.items()}
    assert counts["test"] == {"a": 5, "b": 3, "c": 2}
    assert counts["val"] == {"a": 5, "b": 3, "c": 2}
    assert counts["train"] == {"a": 40, "b": 24, "c": 16}
    texts = [ex.text for rows in splits.values() for ex in rows]
    assert sorted(texts) == sorted(ex.text for ex in examples)


def test_split_files_are_deterministic_per_seed(tmp_path: Path) -> None:
    rows = balanced_rows(20) + [{"text": "text a number 0", "label": "a"}]  # one exact duplicate
    path = jsonl(tmp_path / "d.jsonl", rows)

    def split_bytes(seed: int, folder: str) -> dict[str, bytes]:
        manifest = prepare_split(str(path), None, tmp_path / folder, seed=seed)
        return {name: (manifest.parent / f"{name}.jsonl").read_bytes() for name in ("train", "val", "test")}

    first, again, other = split_bytes(7, "s1"), split_bytes(7, "s2"), split_bytes(8, "s3")
    assert first == again
    assert first["test"] != other["test"]
    manifest = read_manifest(tmp_path / "s1" / "manifest.json")
    assert manifest["seed"] == 7
    assert manifest["counts"] == {"raw": 61, "duplicates_removed": 1, "near_duplicates_removed": 0, "deduplicated": 60}
    assert {name: manifest["files"][name]["count"] for name in ("train", "val", "test")} == {"train": 48, "val": 6, "test": 6}
    assert manifest["source"]["kind"] == "jsonl" and len(manifest["source"]["sha256"]) == 64
    texts, labels = load_split(tmp_path / "s1" / "manifest.json", "test")
    assert len(texts) == 6 and Counter(labels) == {"a": 2, "b": 2, "c": 2}


def test_load_split_detects_a_modified_file(tmp_path: Path) -> None:
    manifest = prepare_split(str(jsonl(tmp_path / "d.jsonl", balanced_rows(10))), None, tmp_path / "s", seed=1)
    with open(manifest.parent / "test.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"text": "sneaked in", "label": "a"}\n')
    with pytest.raises(DataError, match="sha256"):
        load_split(manifest, "test")
