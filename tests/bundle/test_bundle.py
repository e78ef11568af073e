"""Bundle publishing is atomic and versioned; verification refuses anything incomplete or tampered."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundle.card import CARD_FILE, GOLDEN_FILE, MODEL_FILE, TOKENIZER_FILE, ModelCard
from bundle.store import BundleError, list_versions, publish_bundle, verify_bundle, write_card
from tests.support.tiny_models import make_tiny_bundle


@pytest.fixture(scope="module")
def repo_with_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    bundle = make_tiny_bundle(root / "models", name="tiny", cell="gru")
    return root / "models", bundle


def copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (MODEL_FILE, TOKENIZER_FILE, CARD_FILE, GOLDEN_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_published_bundle_is_complete_and_verifies(repo_with_bundle) -> None:
    repo, bundle = repo_with_bundle
    assert bundle == repo / "tiny" / "1"
    card = verify_bundle(bundle)
    assert card.parity_passed and card.version == 1 and card.quantization == "none"
    assert card.source["checkpoint_sha256"] and Path(card.source["checkpoint"]).is_file()
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(card.versions)
    assert card.architecture["cell"] == "gru" and card.inputs[0].shape == ["batch", "seq"]
    json.dumps(card.to_dict())
    for name in ("model.onnx", "tokenizer.json", "model.json"):  # readable by a service running as another user
        assert (bundle / name).stat().st_mode & 0o044 == 0o044, name


def test_publish_picks_next_version_and_leaves_no_staging(repo_with_bundle, tmp_path: Path) -> None:
    repo, bundle = repo_with_bundle
    card = ModelCard.load(bundle / CARD_FILE)
    target = publish_bundle(repo, card, bundle / MODEL_FILE, bundle / TOKENIZER_FILE)
    assert target == repo / "tiny" / "2" and list_versions(repo, "tiny") == [1, 2]
    assert not [p for p in (repo / "tiny").iterdir() if p.name.startswith(".")]
    with pytest.raises(BundleError, match="already exists"):
        publish_bundle(repo, card, bundle / MODEL_FILE, bundle / TOKENIZER_FILE, version=2)


def test_failed_publish_leaves_nothing_behind(repo_with_bundle) -> None:
    repo, bundle = repo_with_bundle
    card = ModelCard.load(bundle / CARD_FILE)
    card.name = "broken"
    with pytest.raises(OSError):
        publish_bundle(repo, card, bundle / "no-such-model.onnx", bundle / TOKENIZER_FILE)
    assert list_versions(repo, "broken") == [] and list((repo / "broken").iterdir()) == []


@pytest.mark.parametrize("missing", [MODEL_FILE, TOKENIZER_FILE, CARD_FILE])
def test_verify_refuses_missing_file(repo_with_bundle, tmp_path: Path, missing: str) -> None:
    copy = copy_bundle(repo_with_bundle[1], tmp_path / "b")
    os.remove(copy / missing)
    with pytest.raises(BundleError, match=f"missing {missing}"):
        verify_bundle(copy)


def test_verify_refuses_sha_mismatch(repo_with_bundle, tmp_path: Path) -> None:
    copy = copy_bundle(repo_with_bundle[1], tmp_path / "b")
    with open(copy / MODEL_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch for model.onnx"):
        verify_bundle(copy)


@pytest.mark.parametrize(("parity", "state"), [(None, "missing"), ({"passed": False}, "failed")])
def test_verify_refuses_missing_or_failed_parity(repo_with_bundle, tmp_path: Path, parity, state) -> None:
    copy = copy_bundle(repo_with_bundle[1], tmp_path / "b")
    card = ModelCard.load(copy / CARD_FILE)
    card.parity = parity
    write_card(copy, card)
    with pytest.raises(BundleError, match=f"parity report {state}"):
        verify_bundle(copy)
    assert verify_bundle(copy, require_parity=False).name == "tiny"
