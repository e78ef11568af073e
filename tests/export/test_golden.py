"""Portable bundles: golden.json (texts -> ids -> logits) ships in every exported bundle, is covered
by the card's sha256s, and a client using only tokenizers + onnxruntime + numpy + json
(scripts/check_golden.py, run in a fresh interpreter with no project module imported)
reproduces it by following docs/CONTRACTS.md."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.card import CARD_FILE, GOLDEN_FILE, ModelCard
from bundle.store import BundleError, verify_bundle
from bundle.tokenization import PAD_ID, UNK_ID
from tests.support.tiny_models import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_golden.py"
PROJECT_PACKAGES = {"bundle", "export", "training", "service", "client", "pipeline", "tests", "bench",
                    "textclf_protos", "textclf_cli", "scripts"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("golden") / "models", name="tiny", cell="lstm", pooling="max")


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def check_golden(bundle_dir: Path, cwd: Path) -> tuple[int, dict, list[str]]:
    """Run the standalone client isolated (-I: no cwd or PYTHONPATH on sys.path) from ``cwd``."""
    script = cwd / "check_golden.py"
    shutil.copyfile(SCRIPT, script)  # a copy: nothing of the repository sits beside it
    done = subprocess.run([sys.executable, "-I", str(script), str(bundle_dir), "--print-modules"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    return done.returncode, json.loads(lines[0]), json.loads(lines[1])


def test_golden_file_is_in_the_bundle_and_pins_the_contract(bundle: Path) -> None:
    card = verify_bundle(bundle)
    assert GOLDEN_FILE in card.sha256
    golden = json.loads((bundle / GOLDEN_FILE).read_text(encoding="utf-8"))
    assert golden["labels"] == card.labels and golden["max_len"] == card.max_len
    assert golden["pad_id"] == PAD_ID and golden["unk_id"] == UNK_ID and golden["atol_logits"] == 1e-4
    cases = {c["text"]: c for c in golden["cases"]}
    assert len(cases) >= 8
    assert cases[""]["input_ids"] == [UNK_ID] and cases[""]["length"] == 1  # empty text -> one [UNK]
    assert any(c["length"] == card.max_len and len(c["text"].split()) > card.max_len for c in cases.values())  # truncated
    assert any(PAD_ID in c["input_ids"][: c["length"]] for c in cases.values())  # literal "[PAD]" in a text
    assert len({c["label"] for c in cases.values()}) >= 1 and all(len(c["logits"]) == len(card.labels) for c in cases.values())


def test_golden_logits_reproduced_without_project_code(bundle: Path, tmp_path: Path) -> None:
    rc, result, modules = check_golden(bundle, tmp_path)
    assert rc == 0, result
    assert result["problems"] == [] and result["texts"] >= 8 and result["max_abs_diff"] <= 1e-4
    assert {"tokenizers", "onnxruntime", "numpy", "json"} <= set(modules)
    assert not PROJECT_PACKAGES & set(modules), PROJECT_PACKAGES & set(modules)


def test_golden_check_fails_on_a_wrong_logit(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    golden = json.loads((copy / GOLDEN_FILE).read_text(encoding="utf-8"))
    golden["cases"][-1]["logits"][0] += 1e-3
    (copy / GOLDEN_FILE).write_text(json.dumps(golden), encoding="utf-8")
    rc, result, _ = check_golden(copy, tmp_path)
    assert rc == 1 and any("max |logit - golden|" in p for p in result["problems"])
    with pytest.raises(BundleError, match=f"sha256 mismatch for {GOLDEN_FILE}"):
        verify_bundle(copy)


def test_bundle_missing_its_listed_golden_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "b")
    (copy / GOLDEN_FILE).unlink()
    with pytest.raises(BundleError, match=f"missing {GOLDEN_FILE}"):
        verify_bundle(copy)
    card = ModelCard.load(copy / CARD_FILE)
    assert GOLDEN_FILE in card.sha256
    card.sha256["../outside.json"] = card.sha256.pop(GOLDEN_FILE)  # never hash a path the card names freely
    (copy / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    with pytest.raises(BundleError, match="not a bundle file name"):
        verify_bundle(copy)


def test_int8_bundle_golden_reproduced_without_project_code(tmp_path: Path) -> None:
    """INT8 answers move with the batch: golden rows are scored alone and the client checks them alone."""
    bundle_dir = make_tiny_bundle(tmp_path / "models", name="tiny8", cell="lstm", quantize="int8", fit_steps=30)
    golden = json.loads((bundle_dir / GOLDEN_FILE).read_text(encoding="utf-8"))
    assert golden["quantization"] == "int8" and golden["atol_logits"] == 5e-2
    rc, result, modules = check_golden(bundle_dir, tmp_path)
    assert rc == 0 and result["problems"] == [] and result["max_abs_diff"] <= 1e-6, result  # same machine: exact
    assert not PROJECT_PACKAGES & set(modules)
