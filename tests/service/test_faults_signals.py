"""Faults and overload (issue 5): nothing admitted is lost, bad bundles are refused, time is honoured.

Real servers (``python -m service`` subprocesses or the in-process ``ServerThread`` of
tests/service/conftest.py), real gRPC clients for both APIs (textclf.v1 and KServe v2), metrics
scraped over HTTP, server logs read from stderr or caplog. Every wait is on an observable event
(a log line, a metric, a repository event, a process exit) with a deadline.

* SIGTERM under load: client-side tallies equal the server's final request counts (logged by
  ``python -m service`` after the drain), per API and status code.
* Hot reload under load through polling, both APIs: zero failed calls.
* Bad bundles (truncated model.onnx with a matching sha, wrong sha256, missing tokenizer, outputs
  that disagree with the labels, a malformed card, a half-written version directory): each is
  refused, logged, counted, and the previous version keeps serving.
* SIGKILL of the server and of a publisher mid-publish: the restart on the same repository and
  ports is clean (the leftover ``.staging-*`` directory is ignored and logged).
* Deadlines and cancellations of the KServe API and of both streaming RPCs: dropped before
  compute, counted in ``textclf_dropped_texts_total``.
* A full queue answers RESOURCE_EXHAUSTED fast (well under one batch), both APIs, while the
  admitted call completes.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from bundle.card import MODEL_FILE, TOKENIZER_FILE, ModelCard, default_outputs
from bundle.store import publish_bundle, sha256_file, write_card
from client.client import classify_request
from tests.support.metrics import metric, scrape, wait_until
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.service_process import ServiceProcess, free_port
from textclf_protos.inference import grpc_service_pb2 as kpb
from textclf_protos.inference import grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb
from textclf_protos.textclf.v1 import textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
CLASSIFY, INFER = "textclf.v1.Classify", "kserve.ModelInfer"
FINAL_COUNTS = re.compile(r"final request counts: (\{.*\})")
SHUTTING_DOWN = "server is shutting down"


def infer_request(texts: list[str], model: str = "news", version: str = "") -> kpb.ModelInferRequest:
    tensor = kpb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return kpb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor])


class Stubs:
    """One channel with both APIs' stubs; ``send(api, texts)`` makes one unary call."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.textclf = pb_grpc.TextClassifierStub(self.channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self.channel)

    def send(self, api: str, texts: list[str], timeout: float = 15.0) -> int:
        """The answering version."""
        if api == CLASSIFY:
            return self.textclf.Classify(classify_request(texts, "news"), timeout=timeout).version
        return int(self.kserve.ModelInfer(infer_request(texts), timeout=timeout).model_version)

    def future(self, api: str, texts: list[str], timeout: float = 30.0) -> grpc.Future:
        if api == CLASSIFY:
            return self.textclf.Classify.future(classify_request(texts, "news"), timeout=timeout)
        return self.kserve.ModelInfer.future(infer_request(texts), timeout=timeout)

    def close(self) -> None:
        self.channel.close()


# ----------------------------------------------------------------------------- SIGTERM under load

class Caller(threading.Thread):
    """Sends one unary call after another until stopped or its server is gone (connection refused);
    records (start, end, code, details) of each call."""

    def __init__(self, address: str, api: str, stop: threading.Event, index: int) -> None:
        super().__init__(daemon=True)
        self.address, self.api, self.stop, self.index = address, api, stop, index
        self.calls: list[tuple[float, float, str, str]] = []

    def run(self) -> None:
        stubs = Stubs(self.address)
        try:
            n = 0
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    stubs.send(self.api, [f"the market rallied {self.index} {n}", "the striker scored"])
                    code, details = "OK", ""
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                self.calls.append((start, time.monotonic(), code, details))
                if code == "UNAVAILABLE" and SHUTTING_DOWN not in details:
                    self.stop.wait(0.01)  # the transport refused: a real client backs off
                n += 1
        finally:
            stubs.close()


class StreamCaller(threading.Thread):
    """Keeps one bidirectional stream (ClassifyStream or ModelStreamInfer) busy, one message at a
    time, and ends it after an in-stream UNAVAILABLE or when the draining server ends it: records each
    message's (start, end, code, details) under ``<api>.message``, and each stream's status."""

    def __init__(self, address: str, api: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.api, self.stop = address, api, stop
        self.calls: list[tuple[str, float, float, str, str]] = []

    def _request(self, n: int):
        if self.api == "textclf.v1.ClassifyStream":
            return pb.ClassifyStreamRequest(id=str(n), request=classify_request([f"the market {n}"], "news"))
        return infer_request([f"the market {n}"])

    def _outcome(self, response) -> tuple[str, str]:
        if self.api == "textclf.v1.ClassifyStream":
            if response.HasField("error"):
                return grpc.StatusCode.UNAVAILABLE.name if response.error.code == 14 else str(response.error.code), \
                    response.error.message
            return "OK", ""
        if response.error_message:
            return ("UNAVAILABLE" if SHUTTING_DOWN in response.error_message else "OTHER"), response.error_message
        return "OK", ""

    def run(self) -> None:
        stubs = Stubs(self.address)
        method = stubs.textclf.ClassifyStream if self.api == "textclf.v1.ClassifyStream" else stubs.kserve.ModelStreamInfer
        try:
            n = 0
            while not self.stop.is_set():
                outbox: queue.Queue = queue.Queue()
                responses = method(iter(outbox.get, None), timeout=30)
                stream_start = time.monotonic()
                try:
                    while not self.stop.is_set():
                        start = time.monotonic()
                        outbox.put(self._request(n))
                        n += 1
                        code, details = self._outcome(next(responses))
                        self.calls.append((self.api + ".message", start, time.monotonic(), code, details))
                        if code != "OK":
                            break
                    outbox.put(None)  # half-close: the stream ends
                    for _ in responses:
                        pass
                    code, details = "OK", ""
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                    self.stop.wait(0.01)  # the transport refused: back off a little
                self.calls.append((self.api, stream_start, time.monotonic(), code, details))
        finally:
            stubs.close()


def test_sigterm_under_load_client_and_server_tallies_agree(bundles, repo_path) -> None:
    """Unary callers of both APIs and one stream per API run through a SIGTERM. Every call (and
    stream message) the client saw answered is in the server's final counts with the same status,
    and vice versa: OK = admitted and completed, UNAVAILABLE = refused before admission. Calls the
    transport refused after the port closed, or that grpc cancelled undispatched as it closed,
    never reached a servicer (the server counted no CANCELLED, so every client CANCELLED is one)."""
    server = ServiceProcess(repo_path, "--max-queue-delay-ms", "20", "--grace-period", "10")
    stop = threading.Event()
    callers: list[threading.Thread] = [Caller(server.address, api, stop, i) for i, api in enumerate([CLASSIFY, INFER] * 2)]
    callers += [StreamCaller(server.address, api, stop) for api in ("textclf.v1.ClassifyStream", "kserve.ModelStreamInfer")]
    try:
        for caller in callers:
            caller.start()
        # mid-traffic: both APIs answered, texts waiting in the queue right now
        wait_until(lambda: all(metric(scrape(server.metrics_url), "textclf_requests_total", api=api, code="OK") >= 20
                               for api in (CLASSIFY, INFER, "kserve.ModelStreamInfer.message")),
                   timeout=30, what="traffic on both APIs")
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") > 0, what="texts queued")
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        stop.set()
        for caller in callers:
            caller.join(20)
            assert not caller.is_alive()
        final = json.loads(server.wait_line(FINAL_COUNTS).group(1))
    finally:
        stop.set()
        server.kill()

    calls = [(caller.api, *call) for caller in callers if isinstance(caller, Caller) for call in caller.calls]
    calls += [call for caller in callers if isinstance(caller, StreamCaller) for call in caller.calls]
    client: Counter[tuple[str, str]] = Counter()
    never_reached: Counter[str] = Counter()
    for api, _start, _end, code, details in calls:
        if code == "UNAVAILABLE" and SHUTTING_DOWN not in details or code == "CANCELLED":
            # refused by the transport once the port closed, or received by grpc but not yet
            # dispatched when it closed (grpc cancels those): no servicer saw them, nothing was admitted
            never_reached[code] += 1
            continue
        client[(api, code)] += 1
    server_counts = Counter({(api, code): n for api, codes in final.items() for code, n in codes.items()})
    assert {code for _api, code in client} <= {"OK", "UNAVAILABLE"}, client
    assert {code for _api, code in server_counts} <= {"OK", "UNAVAILABLE"}, final
    assert client == server_counts, f"client {dict(client)} != server {final} (+{dict(never_reached)} never reached)"
    drained = sum(1 for _api, start, end, code, _d in calls if start < sigterm_at < end and code == "OK")
    assert drained > 0, "calls in flight at SIGTERM must complete"
    for api in ("textclf.v1.ClassifyStream", "kserve.ModelStreamInfer"):
        # open streams stop reading at the drain and end UNAVAILABLE (tests/service/test_drain.py); a
        # message read just before may still be refused in the stream
        assert client[(api, "UNAVAILABLE")] >= 1, f"{api}: the open stream must end UNAVAILABLE at SIGTERM"
    assert client[(CLASSIFY, "OK")] >= 20 and client[(INFER, "OK")] >= 20


# ----------------------------------------------------------------------------- hot reload, both APIs

def test_hot_reload_by_polling_under_traffic_on_both_apis(repo_path, start_server) -> None:
    make_onnx_bundle(repo_path, name="news", version=1, seed=1)
    server = start_server(max_versions=1, poll_interval=0.02, max_queue_delay_ms=2.0)
    stop = threading.Event()
    apis = [CLASSIFY, INFER] * 2
    seen: list[list[int]] = [[] for _ in apis]  # versions answering each thread's calls, in order
    errors: list[grpc.RpcError] = []

    def hammer(api: str, versions: list[int]) -> None:
        stubs = Stubs(server.address)
        try:
            while not stop.is_set():
                try:
                    versions.append(stubs.send(api, ["the market rallied", "team"]))
                except grpc.RpcError as exc:
                    errors.append(exc)
        finally:
            stubs.close()

    threads = [threading.Thread(target=hammer, args=(api, versions)) for api, versions in zip(apis, seen)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(1 in s for s in seen) or bool(errors), timeout=20,
                   what="every thread answered by version 1 before the first publish")
        for version in (2, 3):
            make_onnx_bundle(repo_path, name="news", version=version, seed=version)  # atomic publish
            server.wait_event(lambda e, v=version: e.kind == "loaded" and e.version == v)
            wait_until(lambda v=version: all(s[-10:] == [v] * 10 for s in seen) or bool(errors),
                       timeout=20, what=f"traffic answered by version {version}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert errors == []
    for api, versions in zip(apis, seen):
        assert {1, 2, 3} <= set(versions), api
        assert versions == sorted(versions), f"{api}: a call saw an older version after a newer one"
    samples = scrape(server.metrics_url)
    for api in (CLASSIFY, INFER):
        answered = sum(len(v) for a, v in zip(apis, seen) if a == api)
        assert metric(samples, "textclf_requests_total", api=api, code="OK") == answered
        assert metric(samples, "textclf_requests_total", api=api) == answered


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


# ----------------------------------------------------------------------------- restart after SIGKILL

PUBLISHER = """
import sys
def pause_before_rename(event, args):
    if event == "os.rename" and ".staging-" in str(args[0]):
        print("PAUSED", args[0], flush=True)
        sys.stdin.readline()  # never answered: the test SIGKILLs this process here
sys.addaudithook(pause_before_rename)
from tests.support.onnx_bundle import make_onnx_bundle
make_onnx_bundle(sys.argv[1], name="news", version=3, seed=3)
print("PUBLISHED", flush=True)
"""


def test_restart_after_sigkill_of_server_and_publisher(bundles, repo_path) -> None:
    port, metrics_port = free_port(), free_port()
    extra = ("--poll-interval", "0.1")
    first = ServiceProcess(repo_path, *extra, port=port, metrics_port=metrics_port)
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(repo_path)], cwd=ROOT, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stop = threading.Event()
    traffic = Caller(first.address, CLASSIFY, stop, 0)
    second = None
    try:
        traffic.start()
        assert publisher.stdout.readline().startswith("PAUSED")  # blocks until the publisher is mid-publish
        staging = [p.name for p in (repo_path / "news").iterdir() if p.name.startswith(".staging-3-")]
        assert len(staging) == 1
        wait_until(lambda: sum(c[2] == "OK" for c in traffic.calls) >= 10, what="traffic before the kill")
        publisher.kill()
        first.kill()
        assert first.process.returncode == -signal.SIGKILL
        assert publisher.wait(10) == -signal.SIGKILL

        second = ServiceProcess(repo_path, *extra, port=port, metrics_port=metrics_port)  # same ports
        assert (second.port, second.metrics_port) == (port, metrics_port)
        assert staging[0] in second.log and "staging" in second.log  # the leftover is logged
        assert (repo_path / "news" / staging[0]).is_dir()  # ignored, not deleted (a publisher may be live)
        # the caller's channel (opened against the killed process) reconnects to the new one
        wait_until(lambda: traffic.calls[-1][2] == "OK" and traffic.calls[-1][0] > traffic.calls[0][0],
                   timeout=20, what="traffic answered again after the restart")
        stop.set()
        traffic.join(20)
        stubs = Stubs(second.address)
        try:
            assert [stubs.send(api, ["the market"]) for api in (CLASSIFY, INFER)] == [2, 2]
            make_onnx_bundle(repo_path, name="news", version=3, seed=3)  # the publish, redone, succeeds
            second.wait_line(re.compile(r"loaded model news version 3"))
            assert stubs.send(INFER, ["the market"]) == 3
        finally:
            stubs.close()
        samples = scrape(second.metrics_url)
        assert metric(samples, "textclf_bundle_refusals_total") == 0
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(30) == 0
    finally:
        stop.set()
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait(10)
        first.kill()
        if second is not None:
            second.kill()


# ----------------------------------------------------------------------------- deadlines, cancellation

def _stream_call(api: str, stubs: Stubs, timeout: float):
    if api == "textclf.v1.ClassifyStream":
        message = pb.ClassifyStreamRequest(id="1", request=classify_request(["a", "b"], "news"))
        return stubs.textclf.ClassifyStream(iter([message]), timeout=timeout)
    return stubs.kserve.ModelStreamInfer(iter([infer_request(["a", "b"])]), timeout=timeout)


DEADLINE_CALLS = {
    INFER: lambda stubs, timeout: stubs.kserve.ModelInfer(infer_request(["a", "b"]), timeout=timeout),
    "textclf.v1.ClassifyStream": lambda stubs, timeout: list(_stream_call("textclf.v1.ClassifyStream", stubs, timeout)),
    "kserve.ModelStreamInfer": lambda stubs, timeout: list(_stream_call("kserve.ModelStreamInfer", stubs, timeout)),
}


@pytest.mark.parametrize("api", list(DEADLINE_CALLS))
def test_deadline_is_honoured_before_compute(bundles, start_server, api) -> None:
    server = start_server(max_queue_delay_ms=400.0)
    stubs = Stubs(server.address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            DEADLINE_CALLS[api](stubs, 0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="deadline") == 2,
                   what="deadline drops")
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_batch_size_count") == 0, "expired texts must not be computed"
        assert metric(samples, "textclf_texts_total") == 0
        assert stubs.send(INFER, ["the market"]) == 2
    finally:
        stubs.close()


@pytest.mark.parametrize("api", [INFER, "textclf.v1.ClassifyStream", "kserve.ModelStreamInfer"])
def test_cancellation_is_honoured_before_compute(bundles, start_server, api) -> None:
    server = start_server(max_queue_delay_ms=3000.0)
    stubs = Stubs(server.address)
    try:
        call = (stubs.kserve.ModelInfer.future(infer_request(["a", "b"]), timeout=30) if api == INFER
                else _stream_call(api, stubs, 30))
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 2, what="queued texts")
        call.cancel()
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_dropped_texts_total", reason="cancelled") == 2,
                   what="cancellation drops")
        samples = scrape(server.metrics_url)
        assert metric(samples, "textclf_batch_size_count") == 0
        assert metric(samples, "textclf_queue_depth") == 0
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_requests_total", api=api, code="CANCELLED") == 1,
                   what="the cancelled call counted")
    finally:
        stubs.close()


# ----------------------------------------------------------------------------- full queue

def test_full_queue_fails_fast_on_both_apis_while_admitted_calls_complete(bundles, start_server) -> None:
    delay = 0.3  # the admitted texts wait this long for batch-mates: the time of one batch here
    server = start_server(max_queue_delay_ms=delay * 1000, max_batch_size=64, max_queue_size=4,
                          max_texts_per_request=4)
    stubs = Stubs(server.address)
    try:
        admitted_at = time.monotonic()
        admitted = stubs.future(CLASSIFY, ["a", "b", "c"])
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 3, what="admitted texts")
        also_admitted = stubs.future(INFER, ["d"])
        wait_until(lambda: metric(scrape(server.metrics_url), "textclf_queue_depth") == 4, what="full queue")
        rejected: list[float] = []
        for api in (CLASSIFY, INFER) * 5:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stubs.send(api, ["one more"])
            rejected.append(time.monotonic() - start)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in info.value.details()
        assert len(admitted.result(timeout=10).predictions) == 3
        assert also_admitted.result(timeout=10).model_version == "2"
        batch_time = time.monotonic() - admitted_at
        assert batch_time >= delay
        assert max(rejected) < delay / 3, f"rejections took up to {max(rejected) * 1e3:.0f} ms"
    finally:
        stubs.close()
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_rejected_texts_total") == 10
    for api in (CLASSIFY, INFER):
        assert metric(samples, "textclf_requests_total", api=api, code="RESOURCE_EXHAUSTED") == 5
        assert metric(samples, "textclf_requests_total", api=api, code="OK") == 1
