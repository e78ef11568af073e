"""Every guarantee in docs/security.md and docs/reliability.md names the test that proves it, and
every test a document names (``tests/<path>.py::test_name``) exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARANTEE_DOCS = ("docs/security.md", "docs/reliability.md")
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def references(text: str) -> list[tuple[str, str]]:
    return REFERENCE.findall(text)


def guarantee_rows(text: str) -> list[str]:
    """Table rows (not the header or separator) of every section whose heading names guarantees."""
    rows, in_guarantees = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            in_guarantees = "guarantee" in line.lower()
        elif in_guarantees and line.startswith("|") and not set(line) <= set("|-: "):
            rows.append(line)
    return [row for row in rows[1:] if not row.startswith("| guarantee |")] if rows else []


@pytest.mark.parametrize("document", sorted({*GUARANTEE_DOCS, *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
                                             "README.md"}))
def test_every_named_test_exists(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    missing = []
    for path, name in references(text):
        source = ROOT / path
        if not source.is_file() or not re.search(rf"^(async )?def {name}\(", source.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"{document} names tests that do not exist: {missing}"


@pytest.mark.parametrize("document", GUARANTEE_DOCS)
def test_every_guarantee_names_its_test(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    rows = guarantee_rows(text)
    assert len(rows) >= 10, f"{document}: the guarantees table was not found"
    unproven = [row[:100] for row in rows if not references(row)]
    assert not unproven, f"{document}: guarantees without a named test: {unproven}"
    assert len(references(text)) >= 20
