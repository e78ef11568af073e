"""Settings: defaults, YAML < env < flags, and clear validation errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_contract() -> None:
    s = load_settings([], environ={})
    assert (s.host, s.port, s.metrics_host, s.metrics_port) == ("0.0.0.0", 8001, "0.0.0.0", 8002)
    assert (s.model_repository, s.grace_period, s.providers, s.batching) == ("./models", 10.0, "auto", True)


def test_precedence_yaml_env_flags(tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("port: 9000\nmax-batch-size: 8\nbatching: false\nmax_queue_delay_ms: 5\n")
    env = {"TEXTCLF_MAX_BATCH_SIZE": "16", "TEXTCLF_CONFIG": str(config), "TEXTCLF_BATCHING": "yes"}
    s = load_settings(["--max-batch-size", "32"], environ=env)
    assert (s.port, s.max_batch_size, s.batching, s.max_queue_delay_ms) == (9000, 32, True, 5.0)
    s = load_settings(["--config", str(config), "--no-batching"], environ={})
    assert (s.max_batch_size, s.batching) == (8, False)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--port", "70000"], {}, "port=70000: must be in [0, 65535]"),
    (["--port", "eighty"], {}, "port from flag --port: cannot read 'eighty'"),
    ([], {"TEXTCLF_BATCHING": "maybe"}, "batching from env TEXTCLF_BATCHING"),
    ([], {"TEXTCLF_PROVIDERS": "gpu"}, "providers='gpu': must be one of auto, cpu, cuda"),
    (["--length-bucket-ratio", "0.5"], {}, "length_bucket_ratio=0.5: must be >= 1"),
    (["--tls-cert", "/nonexistent.pem"], {}, "tls_cert and tls_key must be set together"),
    (["--max-queue-size", "0", "--max-text-bytes", "0"], {}, "max_text_bytes=0"),
    (["--workers", "2", "--repository-control"], {"TEXTCLF_CONTROL_TOKEN": "t" * 16},
     "repository_control=True: cannot be on with workers > 1"),
])
def test_invalid_settings_are_named(argv, env, message) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv, environ=env)
    assert message in str(info.value)


def test_yaml_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_setting'"):
        load_settings(["--config", str(bad)], environ={})
    with pytest.raises(SettingsError, match="config file .*missing.yaml"):
        load_settings(["--config", str(tmp_path / "missing.yaml")], environ={})


def test_settings_table_covers_every_field() -> None:
    rows = settings_table()
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert ("TEXTCLF_PORT", "--port", "8001", "gRPC listen port (0 = any free port)") in rows


@pytest.mark.parametrize("document", ["docs/service.md", "README.md"])
def test_docs_settings_table_is_current(document: str) -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / document).read_text(encoding="utf-8")
    for env, flag, default, meaning in settings_table():
        assert f"| `{env}` | `{flag}` | `{default}` | {meaning} |" in docs, f"{document}: update the row of {env}"


def test_settings_refuse_more_texts_per_request_than_the_queue_holds() -> None:
    with pytest.raises(SettingsError, match="max_texts_per_request=10: must be <= max_queue_size=5"):
        load_settings(["--max-texts-per-request", "10", "--max-queue-size", "5"], environ={})
    result = subprocess.run([sys.executable, "-m", "service", "--max-texts-per-request", "10", "--max-queue-size", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and "max_texts_per_request=10: must be <= max_queue_size=5" in problems[0], result.stderr
    load_settings(["--max-texts-per-request", "5", "--max-queue-size", "5"], environ={})  # equal is fine
