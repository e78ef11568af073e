"""Faults (issue 5, issue 9): bad bundles. Each is refused, logged, counted, and the previous
version keeps serving: truncated model.onnx with a matching sha, wrong sha256, missing
tokenizer, outputs that disagree with the labels, a malformed or edited card, ONNX external data,
a half-written version directory. The repository index shows why, without paths or library
errors.

Real in-process servers (``ServerThread``), real gRPC clients for both APIs, metrics scraped over
HTTP, the repository's log read from caplog.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from bundle.card import MODEL_FILE, TOKENIZER_FILE, ModelCard, default_outputs
from bundle.store import publish_bundle, sha256_file, write_card
from tests.support.api_stubs import CLASSIFY, INFER, Stubs
from tests.support.metrics import metric, scrape
from tests.support.onnx_bundle import make_onnx_bundle
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc


# ----------------------------------------------------------------------------- bad bundles

def truncated_onnx(repo: Path, version: int) -> None:
    """model.onnx cut short, the card's digest updated to match: passes verification, will not load."""
    path = make_onnx_bundle(repo, name="news", version=version, seed=version).path
    model = path / MODEL_FILE
    model.write_bytes(model.read_bytes()[:300])
    card = ModelCard.load(path / "model.json")
    card.sha256[MODEL_FILE] = sha256_file(model)
    write_card(path, card)


def wrong_sha(repo: Path, version: int) -> None:
    path = make_onnx_bundle(repo, name="news", version=version, seed=version).path
    card = ModelCard.load(path / "model.json")
    card.sha256[MODEL_FILE] = "0" * 64
    write_card(path, card)


def missing_tokenizer(repo: Path, version: int) -> None:
    (make_onnx_bundle(repo, name="news", version=version, seed=version).path / TOKENIZER_FILE).unlink()


def labels_disagree_with_logits(repo: Path, version: int) -> None:
    """A card with 3 labels over a model whose logits have 4 columns (digests all correct)."""
    with tempfile.TemporaryDirectory() as scratch:
        four = make_onnx_bundle(scratch, name="news", version=1, seed=version, labels=["a", "b", "c", "d"])
        card = ModelCard.load(four.path / "model.json")
        card.labels = ["business", "sport", "tech"]
        card.outputs = default_outputs(3)  # the card is consistent; only the ONNX graph disagrees
        publish_bundle(repo, card, four.path / MODEL_FILE, four.path / TOKENIZER_FILE, version=version)


def malformed_card(repo: Path, version: int) -> None:
    """model.json that is valid JSON with a wrong type in it (sha256 as a list)."""
    path = make_onnx_bundle(repo, name="news", version=version, seed=version).path
    data = json.loads((path / "model.json").read_text())
    data["sha256"] = list(data["sha256"].values())
    (path / "model.json").write_text(json.dumps(data))


def edited_card(edit: Callable[[dict], None]) -> Callable[[Path, int], None]:
    """A valid bundle whose model.json is then edited in place (digests left as published)."""

    def damage(repo: Path, version: int) -> None:
        path = make_onnx_bundle(repo, name="news", version=version, seed=version).path
        data = json.loads((path / "model.json").read_text())
        edit(data)
        (path / "model.json").write_text(json.dumps(data))

    damage.__name__ = edit.__name__
    return damage


def labels_not_strings(card: dict) -> None:
    card["labels"] = [0, 1, 2]


def metrics_a_list(card: dict) -> None:
    card["metrics"] = [0.9, 0.8]


def labels_reordered(card: dict) -> None:
    card["labels"] = card["labels"][::-1]


def label_renamed(card: dict) -> None:
    card["labels"][0] = "finance"


def max_len_changed(card: dict) -> None:
    card["max_len"] = 8


def external_data(repo: Path, version: int) -> None:
    """model.onnx that keeps its embedding in an external file beside it (model.onnx's digest is
    right), and that file then tampered with: only a self-contained model.onnx is served."""
    import onnx

    path = make_onnx_bundle(repo, name="news", version=version, seed=version).path
    model = onnx.load(str(path / MODEL_FILE))
    onnx.save(model, str(path / MODEL_FILE), save_as_external_data=True, location="weights.bin", size_threshold=256)
    weights = path / "weights.bin"
    weights.write_bytes(bytes(len(weights.read_bytes())))  # zeroed weights: answers would change
    card = ModelCard.load(path / "model.json")
    card.sha256[MODEL_FILE] = sha256_file(path / MODEL_FILE)
    write_card(path, card)


BAD_BUNDLES = [
    (truncated_onnx, "load", "cannot load in onnxruntime"),
    (wrong_sha, "verification", "sha256 mismatch for model.onnx"),
    (missing_tokenizer, "verification", "missing tokenizer.json"),
    (labels_disagree_with_logits, "load", "logits"),
    (malformed_card, "verification", "model.json"),
    # issue 9: the card is schema-checked and its answer-relevant fields are covered by a digest
    (edited_card(labels_not_strings), "verification", "labels must be a list of at least 2 unique non-empty strings"),
    (edited_card(metrics_a_list), "verification", "metrics must be an object"),
    (edited_card(labels_reordered), "verification", "labels/max_len do not match answers_sha256"),
    (edited_card(label_renamed), "verification", "labels/max_len do not match answers_sha256"),
    (edited_card(max_len_changed), "verification", "labels/max_len do not match answers_sha256"),
    (external_data, "verification", "ONNX external data"),
]


@pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "no-warmup"])
@pytest.mark.parametrize(("damage", "reason", "message"), BAD_BUNDLES, ids=[b[0].__name__ for b in BAD_BUNDLES])
def test_bad_bundle_is_refused_logged_counted_and_the_old_version_serves(
        bundles, repo_path, start_server, caplog, damage, reason, message, warmup) -> None:
    server = start_server(warmup=warmup)
    damage(repo_path, 3)
    with caplog.at_level(logging.WARNING, logger="service.repository"):
        server.call(server.app.repository.poll_once())
        server.wait_event(lambda e: e.kind == "refused" and e.version == 3)
        server.call(server.app.repository.poll_once())  # not retried while its files are unchanged
    refusals = [r.getMessage() for r in caplog.records if "refused bundle news version 3" in r.getMessage()]
    assert len(refusals) == 1 and f"({reason})" in refusals[0] and message in refusals[0], refusals
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_bundle_refusals_total", model="news", version="3", reason=reason) == 1
    assert metric(samples, "textclf_bundle_refusals_total") == 1
    assert metric(samples, "textclf_model_loaded", model="news", version="3") == 0
    assert server.app.core.model_versions("news") == [1, 2]
    stubs = Stubs(server.address)
    try:
        assert [stubs.send(api, ["the market rallied"]) for api in (CLASSIFY, INFER)] == [2, 2]
    finally:
        stubs.close()


def test_half_written_version_is_not_loaded_until_complete(bundles, repo_path, start_server, caplog) -> None:
    """A version directory filled file by file (a non-atomic copy): refused at every incomplete
    stage (logged, counted, v2 keeps answering), loaded once complete; ``.staging-*`` ignored."""
    server = start_server()
    with tempfile.TemporaryDirectory() as scratch:
        source = make_onnx_bundle(scratch, name="news", version=3, seed=3).path
        target = repo_path / "news" / "3"
        (repo_path / "news" / ".staging-4-abc").mkdir()  # a publish in progress elsewhere
        model_bytes = (source / MODEL_FILE).read_bytes()
        stages: list[Callable[[], None]] = [
            lambda: target.mkdir(),
            lambda: (target / TOKENIZER_FILE).write_bytes((source / TOKENIZER_FILE).read_bytes()),
            lambda: (target / MODEL_FILE).write_bytes(model_bytes[: len(model_bytes) // 2]),
            lambda: (target / MODEL_FILE).write_bytes(model_bytes),
            lambda: (target / "model.json").write_text((source / "model.json").read_text()[:100]),  # torn card
        ]
        stubs = Stubs(server.address)
        try:
            with caplog.at_level(logging.WARNING, logger="service.repository"):
                for stage in stages:
                    stage()
                    server.call(server.app.repository.poll_once())
                    assert server.app.core.model_versions("news") == [1, 2]
                    assert [stubs.send(api, ["the market"]) for api in (CLASSIFY, INFER)] == [2, 2]
            refused = scrape(server.metrics_url)
            # the empty directory and each stage with different files: one refusal per distinct state
            assert metric(refused, "textclf_bundle_refusals_total", model="news", version="3") == len(stages)
            assert sum("refused bundle news version 3" in r.getMessage() for r in caplog.records) == len(stages)
            (target / "model.json").write_text((source / "model.json").read_text())
            server.call(server.app.repository.poll_once())
            assert server.app.core.model_versions("news") == [1, 2, 3]
            assert [stubs.send(api, ["the market"]) for api in (CLASSIFY, INFER)] == [3, 3]
        finally:
            stubs.close()
    assert 4 not in server.app.core.model_versions("news")



def test_repository_index_shows_no_paths_nor_library_errors(bundles, repo_path, start_server, caplog) -> None:
    """RepositoryIndex needs no token: refusal reasons name the stage and our own finding, never an
    absolute path or onnxruntime's exception text (those go to the log)."""
    server = start_server()
    for version, damage in ((3, truncated_onnx), (4, wrong_sha), (5, external_data)):
        damage(repo_path, version)
    with caplog.at_level(logging.WARNING, logger="service.repository"):
        server.call(server.app.repository.poll_once())
    with grpc.insecure_channel(server.address) as channel:
        index = kpb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=10)
    reasons = {int(m.version): m.reason for m in index.models if m.state != "READY"}
    assert set(reasons) == {3, 4, 5}, reasons
    for reason in reasons.values():
        assert str(repo_path) not in reason and "/tmp" not in reason, reason
        assert "ONNXRuntimeError" not in reason and "INVALID_PROTOBUF" not in reason, reason
    assert reasons[3].startswith("refused (load)") and "server log" in reasons[3]
    assert "news/4: sha256 mismatch for model.onnx" in reasons[4]
    assert "external data" in reasons[5]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ONNXRuntimeError" in logged and str(repo_path) in logged  # the details are in the log
