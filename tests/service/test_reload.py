"""Hot reload under traffic, refused bundles, polling, latest-N versions."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from bundle.card import MODEL_FILE, ModelCard
from bundle.store import sha256_file, write_card
from client.client import TextclfClient
from service.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from tests.support.metrics import metric, scrape, wait_until
from tests.support.onnx_bundle import make_onnx_bundle

CONTROL = {"repository_control": True, "control_token": "reload-tests-control-token"}


def hammer(address: str, stop: threading.Event, versions_seen: list[int], errors: list[Exception]) -> None:
    with TextclfClient(address, retry=False, timeout=10) as client:
        while not stop.is_set():
            try:
                versions_seen.append(client.classify(["the market rallied", "team"], "news").version)
            except grpc.RpcError as exc:
                errors.append(exc)


def test_hot_reload_under_concurrent_traffic_loses_nothing(repo_path, start_server) -> None:
    make_onnx_bundle(repo_path, name="news", version=1, seed=1)
    server = start_server(max_versions=1, max_queue_delay_ms=2.0, **CONTROL)
    stop, seen, errors = threading.Event(), [], []
    with ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(hammer, server.address, stop, seen, errors) for _ in range(6)]
        try:
            wait_until(lambda: 1 in seen or bool(errors), what="traffic on version 1 before the first swap")
            for version in (2, 3):
                make_onnx_bundle(repo_path, name="news", version=version, seed=version)
                calls_before = len(seen)
                server.call(server.app.core.load_model("news"))
                assert server.app.core.model_versions("news") == [version]
                with TextclfClient(server.address, retry=False) as probe:
                    assert probe.classify(["x"], "news").version == version
                while len(seen) < calls_before + 20 and not errors:
                    stop.wait(0.01)  # let traffic flow over the swap
        finally:
            stop.set()
            for worker in workers:
                worker.result()
    assert errors == []
    assert {1, 2, 3} <= set(seen)
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_model_loaded", model="news", version="3") == 1
    assert metric(samples, "textclf_model_loaded", model="news", version="1") == 0
    assert metric(samples, "textclf_requests_total", model="news", code="OK") == len(seen) + 2  # + probes


def corrupt_sha(bundle_dir: Path) -> None:
    with open(bundle_dir / MODEL_FILE, "ab") as handle:
        handle.write(b"tampered")


def truncate_onnx(bundle_dir: Path) -> None:
    """A truncated model.onnx whose card digest matches: passes verification, fails to load."""
    model = bundle_dir / MODEL_FILE
    model.write_bytes(model.read_bytes()[:200])
    card = ModelCard.load(bundle_dir / "model.json")
    card.sha256[MODEL_FILE] = sha256_file(model)
    write_card(bundle_dir, card)


@pytest.mark.parametrize(("damage", "reason"), [(corrupt_sha, "verification"), (truncate_onnx, "load")])
def test_corrupted_new_version_is_refused_and_old_keeps_serving(bundles, repo_path, start_server, damage,
                                                                reason) -> None:
    server = start_server(**CONTROL)
    bad = make_onnx_bundle(repo_path, name="news", version=3, seed=3)
    damage(bad.path)
    with pytest.raises(FailedPrecondition) as info:
        server.call(server.app.core.load_model("news"))
    assert "version 3" in info.value.message and "still serving versions [1, 2]" in info.value.message
    with TextclfClient(server.address, retry=False) as client:
        assert client.classify(["the market"], "news").version == 2
        assert client.get_model("news").versions == [1, 2]
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_bundle_refusals_total", model="news", version="3", reason=reason) == 1
    states = {(s.version, s.state) for s in server.app.core.repository_index()}
    assert {(1, "READY"), (2, "READY"), (3, "UNAVAILABLE")} <= states


def test_polling_picks_up_new_versions_and_refuses_bad_ones_once(bundles, repo_path, start_server) -> None:
    server = start_server(poll_interval=0.05)
    bad = make_onnx_bundle(repo_path, name="news", version=3, seed=3)
    corrupt_sha(bad.path)
    server.wait_event(lambda e: e.kind == "refused" and e.version == 3)
    make_onnx_bundle(repo_path, name="news", version=4, seed=4)
    server.wait_event(lambda e: e.kind == "loaded" and e.version == 4)
    with TextclfClient(server.address, retry=False) as client:
        assert client.classify(["x"], "news").version == 4
    make_onnx_bundle(repo_path, name="sport", version=1, seed=5, labels=["a", "b"])
    server.wait_event(lambda e: e.kind == "loaded" and e.name == "sport")
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_bundle_refusals_total", model="news", version="3") == 1  # not retried each poll
    hidden = repo_path / "news" / ".staging-9-abc"
    hidden.mkdir()
    assert 9 not in server.app.core.model_versions("news")


def test_latest_n_versions(repo_path, start_server) -> None:
    for version in (1, 2, 3):
        make_onnx_bundle(repo_path, name="news", version=version, seed=version)
    server = start_server(max_versions=2)
    assert server.app.core.model_versions("news") == [2, 3]


def test_repository_control_errors(bundles, start_server) -> None:
    server = start_server(**CONTROL)
    with pytest.raises(NotFound):
        server.call(server.app.core.load_model("absent"))
    with pytest.raises(InvalidArgument):
        server.call(server.app.core.load_model("../news"))
    disabled = start_server(repository_control=False)
    with pytest.raises(Unimplemented, match="disabled"):
        disabled.call(disabled.app.core.load_model("news"))


def test_reload_race_ids_come_from_the_tokenizer_of_the_version_that_computes_them(repo_path, start_server) -> None:
    """Deterministic: a request resolved to version 1 is held right before its version's scheduler
    while version 2, with a much smaller vocabulary, replaces version 1. Released, the request is
    answered by version 2 exactly as version 2 answers it (its ids from version 2's tokenizer;
    version 1's ids would index past version 2's embedding table)."""
    make_onnx_bundle(repo_path, name="news", version=1, seed=1)
    server = start_server(max_versions=1, **CONTROL)
    texts = ["the striker scored twice and the team won the match", "investors expect the bank to raise rates"]
    v1 = server.app.core.get_model("news", 1)
    arrived, release = threading.Event(), server.call(_new_event())
    real_submit = v1.scheduler.submit

    async def held_submit(*args, **kwargs):
        arrived.set()
        await release.wait()
        return await real_submit(*args, **kwargs)

    v1.scheduler.submit = held_submit
    with TextclfClient(server.address, retry=False, timeout=20) as client, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.classify, texts, "news", top_k=3)
        assert arrived.wait(10)
        v2 = make_onnx_bundle(repo_path, name="news", version=2, seed=2, corpus=["market rallied"])
        assert v2.encoder.vocab_size < 8
        server.call(server.app.core.load_model("news"))
        assert server.app.core.model_versions("news") == [2]
        server.loop.call_soon_threadsafe(release.set)
        result = answer.result(20)
    assert result.version == 2
    expected = v2.expected_probabilities(texts)
    for row, prediction in enumerate(result.predictions):
        for label, probability in prediction.top:
            assert abs(probability - expected[row][v2.labels.index(label)]) < 1e-5


async def _new_event():
    import asyncio

    return asyncio.Event()
