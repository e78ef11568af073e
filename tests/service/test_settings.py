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
    assert len(rows) == len(Settings.model_fields)
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


def test_each_source_overrides_the_one_below(tmp_path) -> None:
    """defaults < YAML < env < flags, one setting at a time and all four layers at once."""
    config = tmp_path / "serve.yaml"
    config.write_text("port: 9000\nmax_batch_size: 8\nmax_queue_size: 900\n")
    env = {"TEXTCLF_CONFIG": str(config), "TEXTCLF_PORT": "9100", "TEXTCLF_MAX_BATCH_SIZE": "16"}
    s = load_settings(["--port", "9200"], environ=env)
    # port: flag over env over YAML; max_batch_size: env over YAML; max_queue_size: YAML; host: default
    assert (s.port, s.max_batch_size, s.max_queue_size, s.host) == (9200, 16, 900, "0.0.0.0")
    assert load_settings([], environ=env).port == 9100
    assert load_settings([], environ={"TEXTCLF_CONFIG": str(config)}).port == 9000
    assert load_settings([], environ={}).port == 8001
    # --config beats TEXTCLF_CONFIG
    other = tmp_path / "other.yaml"
    other.write_text("port: 9300\n")
    assert load_settings(["--config", str(other)], environ={"TEXTCLF_CONFIG": str(config)}).port == 9300


def test_every_bad_setting_gets_one_line_naming_its_source(tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("max_batch_size: many\nwarmup: 2\nport: true\n")
    env = {"TEXTCLF_CONFIG": str(config), "TEXTCLF_BATCHING": "maybe", "TEXTCLF_TRACING_SAMPLE_RATIO": "half"}
    with pytest.raises(SettingsError) as info:
        load_settings(["--grace-period", "soon", "--workers", "x"], environ=env)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert sorted(line.strip() for line in lines[1:]) == sorted([
        f"max_batch_size from config file {config}: cannot read 'many' (expected an integer)",
        f"warmup from config file {config}: cannot read 2 (expected true/false)",
        f"port from config file {config}: cannot read True (expected an integer)",
        "batching from env TEXTCLF_BATCHING: cannot read 'maybe' (expected true/false)",
        "tracing_sample_ratio from env TEXTCLF_TRACING_SAMPLE_RATIO: cannot read 'half' (expected a number)",
        "grace_period from flag --grace-period: cannot read 'soon' (expected a number)",
        "workers from flag --workers: cannot read 'x' (expected an integer)",
    ])
    # range and cross-field rules name the source of the value they refuse
    with pytest.raises(SettingsError) as info:
        load_settings(["--port", "70000"], environ={"TEXTCLF_MAX_QUEUE_SIZE": "5"})
    assert str(info.value).splitlines()[1:] == [
        "  port=70000: must be in [0, 65535] (from flag --port)",
        "  max_texts_per_request=256: must be <= max_queue_size=5: a request of max_texts_per_request texts could "
        "never be admitted, even on an idle server",
    ]


def test_yaml_keys_are_setting_names_exactly(tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("PORT: 9000\nmax-batch-size: 8\n")
    with pytest.raises(SettingsError) as info:
        load_settings(["--config", str(config)], environ={})
    assert str(info.value).splitlines()[1:] == [f"  config file {config}: unknown setting 'PORT'"]
    for text, message in [("- port\n", "expected a mapping"), ("port: [\n", "not valid YAML")]:
        config.write_text(text)
        with pytest.raises(SettingsError, match=message):
            load_settings(["--config", str(config)], environ={})
    with pytest.raises(SettingsError, match=f"config file {tmp_path}: Is a directory"):
        load_settings([], environ={"TEXTCLF_CONFIG": str(tmp_path)})
    config.write_text("")
    assert load_settings(["--config", str(config)], environ={}) == Settings()  # an empty file sets nothing


def test_values_are_read_as_before() -> None:
    # environment names are exact; boolean words are trimmed; a flag value "null" is a string
    assert load_settings([], environ={"textclf_port": "1", "TEXTCLF_port": "2"}).port == 8001
    assert load_settings([], environ={"TEXTCLF_BATCHING": " off "}).batching is False
    with pytest.raises(SettingsError, match="tls_cert='null': tls_cert and tls_key must be set together"):
        load_settings(["--tls-cert", "null"], environ={})
    # a YAML true/false is not a number; a number is a string where a string is wanted
    with pytest.raises(SettingsError, match=r"max_versions: cannot read True \(expected an integer\)"):
        Settings(max_versions=True)
    assert Settings(tracing_service_name=2024).tracing_service_name == "2024"
    assert load_settings(["--metrics-port", "-1", "--no-warmup"], environ={}).metrics_port == -1


def test_flags_are_the_settings_names_with_dashes() -> None:
    from service.settings import _Environment, _parser, flag_name

    parser, _ = _parser(_Environment(Settings, {}))
    flags = {option for action in parser._actions for option in action.option_strings}
    expected = {"-h", "--help", "--config"} | {flag_name(name) for name in Settings.model_fields}
    expected |= {"--no-" + flag_name(name)[2:] for name, f in Settings.model_fields.items() if f.annotation is bool}
    assert flags == expected
    text = parser.format_help()
    assert "[env: TEXTCLF_MAX_RECEIVE_MESSAGE_BYTES]" in text and "--batching, --no-batching" in text
    with pytest.raises(SystemExit) as info:
        load_settings(["--no-such-flag"], environ={})
    assert info.value.code == 2


def test_settings_built_directly_read_only_their_arguments(monkeypatch) -> None:
    monkeypatch.setenv("TEXTCLF_PORT", "1234")
    assert Settings().port == 8001 and Settings(port=0).port == 0
    assert load_settings([]).port == 1234  # load_settings reads os.environ by default
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        Settings(prot=1)


def test_settings_are_frozen_and_replace_validates() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=0, batching=False) == Settings(port=0, batching=False)
    with pytest.raises(SettingsError, match=r"port=-5: must be in \[0, 65535\]"):
        s.replace(port=-5)
    with pytest.raises(SettingsError, match=r"length_bucket_ratio=0.5: must be >= 1"):
        Settings(length_bucket_ratio=0.5)


def test_serve_exits_2_with_the_messages(capsys) -> None:
    from service.__main__ import main

    assert main(["--port", "eighty", "--max-queue-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textclf serve: invalid settings:\n")
    assert "  port from flag --port: cannot read 'eighty' (expected an integer)\n" in err
