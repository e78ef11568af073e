"""docs/security.md names the real settings and flags of TLS, repository control, the listen
addresses and logging (tests/service/test_security_*.py prove what it says about them)."""
from __future__ import annotations

from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_security_doc_names_real_settings() -> None:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    fields = Settings.model_fields
    for name in ("tls_cert", "tls_key", "tls_client_ca", "repository_control", "control_token", "control_token_file",
                 "host", "metrics_host", "metrics_port", "log_request_texts", "log_level"):
        assert name in fields and f"`{name}" in doc, name
    for flag in ("--tls-ca", "--tls-cert", "--tls-key", "--repository-control", "--control-token-file"):
        assert flag in doc, flag
