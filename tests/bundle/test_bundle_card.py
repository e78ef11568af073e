"""The bundle card schema, the answers digest, the hashed-file list and the external-data scan
(issue 9, item 3), at the bundle level; the service side (refused, logged, counted, the old
version serves) is
tests/service/test_faults_bad_bundles.py::test_bad_bundle_is_refused_logged_counted_and_the_old_version_serves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundle.card import ANSWER_FIELDS, HASHED_FILES, MODEL_FILE, TOKENIZER_FILE, card_problems
from bundle.onnx_external import MalformedOnnx, external_tensors
from bundle.store import BundleError, publish_bundle, verify_bundle
from tests.support.onnx_bundle import make_onnx_bundle


def test_a_published_card_matches_the_schema_and_its_digests(tmp_path: Path) -> None:
    bundle = make_onnx_bundle(tmp_path / "models")
    data = json.loads((bundle.path / "model.json").read_text())
    assert card_problems(data) == []
    assert set(data["sha256"]) == set(HASHED_FILES) and ANSWER_FIELDS == ("labels", "max_len")
    assert data["answers_sha256"] == verify_bundle(bundle.path).answers_digest()


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda c: c.update(labels=[0, 1, 2]), "labels must be a list of at least 2 unique non-empty strings"),
    (lambda c: c.update(labels=["a", "a", "b"]), "labels must be a list"),
    (lambda c: c.update(labels=["a", "", "b"]), "labels must be a list"),
    (lambda c: c.update(labels="abc"), "labels must be a list"),
    (lambda c: c.update(max_len=0), "max_len must be an integer >= 1"),
    (lambda c: c.update(max_len=True), "max_len must be an integer >= 1"),
    (lambda c: c.update(max_len="64"), "max_len must be an integer >= 1"),
    (lambda c: c.update(metrics=[1, 2]), "metrics must be an object"),
    (lambda c: c.update(parity="passed"), "parity must be an object or null"),
    (lambda c: c.update(version="1"), "version must be an integer >= 1"),
    (lambda c: c.pop("answers_sha256"), "missing field(s) answers_sha256"),
    (lambda c: c["outputs"][0].update(shape=["batch", 4]), "outputs[0] declares 4 logits for 3 labels"),
    (lambda c: c["sha256"].update({MODEL_FILE: "not-hex"}), "sha256 must map file names"),
], ids=["labels-ints", "labels-duplicate", "labels-empty", "labels-string", "max-len-0", "max-len-bool",
        "max-len-str", "metrics-list", "parity-str", "version-str", "no-answers-digest", "outputs-width", "bad-hex"])
def test_a_card_that_breaks_the_schema_is_refused_with_the_reason(tmp_path: Path, edit, problem) -> None:
    path = make_onnx_bundle(tmp_path / "models").path
    data = json.loads((path / "model.json").read_text())
    edit(data)
    (path / "model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="does not match the card schema") as info:
        verify_bundle(path)
    assert problem in str(info.value)


def test_extra_hashed_files_are_published_hashed_and_verified(tmp_path: Path) -> None:
    """How a further bundle file (e.g. golden fixtures) is covered: publish it with ``extra_files``
    (or add it to HASHED_FILES to make it required); a changed copy is refused."""
    source = make_onnx_bundle(tmp_path / "src").path
    fixtures = tmp_path / "golden.json"
    fixtures.write_text('{"texts": ["a"]}')
    card = verify_bundle(source)
    path = publish_bundle(tmp_path / "models", card, source / MODEL_FILE, source / TOKENIZER_FILE, version=1,
                          extra_files={"golden.json": fixtures})
    assert set(verify_bundle(path).sha256) == {MODEL_FILE, TOKENIZER_FILE, "golden.json"}
    (path / "golden.json").write_text('{"texts": ["b"]}')
    with pytest.raises(BundleError, match="sha256 mismatch for golden.json"):
        verify_bundle(path)
    (path / "golden.json").unlink()
    with pytest.raises(BundleError, match="missing golden.json"):
        verify_bundle(path)
    with pytest.raises(BundleError, match="not bundle file names"):
        publish_bundle(tmp_path / "models", card, source / MODEL_FILE, source / TOKENIZER_FILE, version=2,
                       extra_files={"../escape.json": fixtures})


def test_publish_refuses_a_card_verification_would_refuse(tmp_path: Path) -> None:
    source = make_onnx_bundle(tmp_path / "src").path
    card = verify_bundle(source)
    card.labels = ["a", "b", "c", "c"]
    with pytest.raises(BundleError, match="labels must be a list"):
        publish_bundle(tmp_path / "models", card, source / MODEL_FILE, source / TOKENIZER_FILE, version=1)
    assert not (tmp_path / "models" / card.name / "1").exists()


def _external(tensor: TensorProto) -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    tensor.ClearField("raw_data")
    return tensor


def test_external_tensors_are_found_wherever_a_model_can_hold_them(tmp_path: Path) -> None:
    bundle = make_onnx_bundle(tmp_path / "models")
    model = onnx.load(str(bundle.path / MODEL_FILE))
    assert external_tensors(model.SerializeToString()) == []
    # a graph initializer
    initializer = onnx.load(str(bundle.path / MODEL_FILE))
    _external(initializer.graph.initializer[0])
    assert external_tensors(initializer.SerializeToString()) == [initializer.graph.initializer[0].name]
    # a Constant node's tensor attribute inside an If subgraph
    constant = _external(numpy_helper.from_array(np.zeros(3, dtype=np.float32), "hidden"))
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=constant)], "branch", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])])
    nested = onnx.load(str(bundle.path / MODEL_FILE))
    nested.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    assert external_tensors(nested.SerializeToString()) == ["hidden", "hidden"]
    with pytest.raises(MalformedOnnx):
        external_tensors(b"\x0a\xff\xff\xff")  # a length past the end
