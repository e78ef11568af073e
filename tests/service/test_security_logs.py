"""Security (issue 5): log hygiene. ``python -m service`` at DEBUG, sent texts and control calls
that carry sentinels, never logs request texts or tokens (the expected or a presented one); texts
only with the debug setting, at DEBUG. docs/security.md describes what these tests prove.
"""
from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from client.client import TextclfClient
from tests.support.security_server import AUTHORIZED, TOKEN, repo, rpc_error  # noqa: F401 - repo: fixture
from tests.support.service_process import ServiceProcess
from textclf_protos.textclf.v1 import textclf_pb2 as pb


TEXT_SENTINEL = "zebra-SENTINEL-TEXT-7c1f"
WRONG_TOKEN = "WRONG-SENTINEL-TOKEN-5d2e9a"


def _serve_and_log(repo: Path, *flags: str) -> tuple[str, list[str]]:
    """Run ``python -m service`` at DEBUG, make classify and control calls carrying sentinels,
    SIGTERM it and return everything it wrote to stdout/stderr (+ the outcomes seen)."""
    server = ServiceProcess(repo, "--log-level", "DEBUG", "--repository-control", "--grace-period", "2", *flags,
                            env={"TEXTCLF_CONTROL_TOKEN": TOKEN, "TEXTCLF_CONFIG": None})
    outcomes: list[str] = []
    try:
        with TextclfClient(server.address, retry=False) as client:
            client.classify([TEXT_SENTINEL, "the market"], "news")
            request = pb.ClassifyRequest(model="news", texts=[TEXT_SENTINEL])
            outcomes += [r.ok and "ok" or r.message for r in client.classify_stream([("1", request)])]
            too_long = TEXT_SENTINEL * 10_000
            outcomes.append(rpc_error(lambda: client.classify([too_long], "news")).code().name)
        with triton.InferenceServerClient(server.address) as kserve:
            text = triton.InferInput("TEXT", [1], "BYTES")
            text.set_data_from_numpy(np.array([TEXT_SENTINEL.encode()], dtype=np.object_))
            kserve.infer("news", [text])
            for headers in ({"authorization": f"Bearer {WRONG_TOKEN}"}, {"authorization": WRONG_TOKEN},
                            dict(AUTHORIZED)):
                try:
                    kserve.load_model("news", headers=headers)
                    outcomes.append("loaded")
                except InferenceServerException as exc:
                    outcomes.append(exc.status())
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return server.log, outcomes


def test_logs_contain_no_request_texts_and_no_tokens(repo: Path) -> None:
    log, outcomes = _serve_and_log(repo)
    assert outcomes == ["ok", "INVALID_ARGUMENT", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED",
                        "loaded"]
    assert " DEBUG " in log and "loaded model news version 1" in log  # it did log, at DEBUG
    for secret in (TEXT_SENTINEL, "SENTINEL", TOKEN, WRONG_TOKEN):
        assert secret not in log, f"{secret!r} leaked into the server log"


def test_request_texts_are_logged_only_with_the_debug_setting_at_debug_level(repo: Path) -> None:
    log, _ = _serve_and_log(repo, "--log-request-texts")
    leaked = [line for line in log.splitlines() if TEXT_SENTINEL in line]
    assert leaked and all(" DEBUG service.core: classified news/1" in line for line in leaked), leaked
    for secret in (TOKEN, WRONG_TOKEN):
        assert secret not in log
