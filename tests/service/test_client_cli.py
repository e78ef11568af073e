"""The ``textclf classify`` CLI and the client's retry service config."""
from __future__ import annotations

import io
import json

from client import cli
from client.client import retry_service_config
import textclf_cli


def test_classify_table_and_json(server, bundles, capsys, monkeypatch) -> None:
    assert cli.main(["--address", server.address, "--model", "news", "--top-k", "2", "the market rallied"]) == 0
    table = capsys.readouterr().out
    assert "model news version 2" in table and "the market rallied" in table
    monkeypatch.setattr("sys.stdin", io.StringIO("first line\n\nsecond line\n"))
    assert textclf_cli.main(["classify", "--address", server.address, "--model", "news", "--version", "1",
                             "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == 1 and [p["text"] for p in data["predictions"]] == ["first line", "second line"]
    assert all(p["label"] in bundles[1].labels for p in data["predictions"])


def test_classify_errors_exit_nonzero(server, capsys) -> None:
    assert cli.main(["--address", server.address, "--model", "nope", "x"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_retry_service_config() -> None:
    config = json.loads(retry_service_config())
    (method,) = config["methodConfig"]
    assert {"service": "textclf.v1.TextClassifier"} in method["name"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
