"""Security (issue 5): TLS and mutual TLS on the gRPC port (the health probe and the CLIs too),
and bad TLS files as a clear start-up error.

Real servers on 127.0.0.1 (port 0) with real clients: ``TextclfClient``, ``tritonclient.grpc``,
the health probe and the classify CLI; a throwaway PKI is made with ``cryptography`` in a
temporary directory. docs/security.md describes what these tests prove.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client import cli as classify_cli
from client.client import TextclfClient
from service import __main__ as service_main
from service import healthcheck
from tests.support.security_server import classify_news, repo, rpc_error, start  # noqa: F401 - repo, start: fixtures

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- throwaway PKI

@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer.subject if issuer else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    elif server:
        builder = (builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key=None) -> tuple[Path, Path | None]:
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, None
    key_path = directory / f"{name}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_ca_key = _key(), _key()
    ca = _certificate("textclf test CA", ca_key, None, ca_key, ca=True)
    other_ca = _certificate("some other CA", other_ca_key, None, other_ca_key, ca=True)
    server_key, client_key, other_client_key = _key(), _key(), _key()
    server = _certificate("localhost", server_key, ca, ca_key, server=True)
    client = _certificate("textclf test client", client_key, ca, ca_key)
    other_client = _certificate("textclf test client", other_client_key, other_ca, other_ca_key)
    ca_path, _ = _write(directory, "ca", ca)
    other_ca_path, _ = _write(directory, "other-ca", other_ca)
    server_paths = _write(directory, "server", server, server_key)
    client_paths = _write(directory, "client", client, client_key)
    other_paths = _write(directory, "other-client", other_client, other_client_key)
    return Pki(ca_path, *server_paths, *client_paths, other_ca_path, *other_paths)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- TLS / mTLS

def test_tls_answers_tls_clients_and_refuses_plaintext(start, pki: Pki) -> None:
    server = start(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with TextclfClient(server.address, retry=False, tls_ca=str(pki.ca)) as client:
        assert classify_news(client) == 1
    with TextclfClient(f"localhost:{server.app.port}", retry=False, tls_ca=str(pki.ca)) as client:
        assert classify_news(client) == 1  # the SAN covers localhost too
    with TextclfClient(server.address, retry=False, timeout=5) as plaintext:
        assert rpc_error(lambda: classify_news(plaintext)).code() == grpc.StatusCode.UNAVAILABLE
    with TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.other_ca)) as wrong_ca:
        assert rpc_error(lambda: classify_news(wrong_ca)).code() == grpc.StatusCode.UNAVAILABLE  # server not trusted
    with triton.InferenceServerClient(server.address, ssl=True, root_certificates=str(pki.ca)) as kserve:
        assert kserve.is_server_ready()
    assert healthcheck.main(["--address", server.address, "--tls-ca", str(pki.ca)]) == 0
    assert healthcheck.main(["--address", server.address, "--timeout", "3"]) == 1


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(start, pki: Pki, capsys) -> None:
    server = start(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    with TextclfClient(server.address, retry=False, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                       tls_key=str(pki.client_key)) as client:
        assert classify_news(client) == 1
    no_cert = TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.ca))
    other_ca = TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.ca),
                             tls_cert=str(pki.other_client_cert), tls_key=str(pki.other_client_key))
    plaintext = TextclfClient(server.address, retry=False, timeout=5)
    for refused in (no_cert, other_ca, plaintext):
        with refused:
            assert rpc_error(lambda: classify_news(refused)).code() == grpc.StatusCode.UNAVAILABLE
    with triton.InferenceServerClient(server.address, ssl=True, root_certificates=str(pki.ca),
                                      private_key=str(pki.client_key),
                                      certificate_chain=str(pki.client_cert)) as kserve:
        assert kserve.is_model_ready("news")
    probe = ["--address", server.address, "--tls-ca", str(pki.ca), "--timeout", "3"]
    assert healthcheck.main(probe + ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]) == 0
    assert healthcheck.main(probe) == 1
    assert healthcheck.main(probe + ["--tls-cert", str(pki.other_client_cert),
                                     "--tls-key", str(pki.other_client_key)]) == 1
    capsys.readouterr()
    assert classify_cli.main(["--address", server.address, "--model", "news", "--json", "--tls-ca", str(pki.ca),
                              "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key), "x"]) == 0
    assert '"version": 1' in capsys.readouterr().out
    assert classify_cli.main(["--address", server.address, "--model", "news", "--timeout", "3",
                              "--tls-ca", str(pki.ca), "x"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_health_probe_over_tls_in_a_subprocess(start, pki: Pki) -> None:
    server = start(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    probe = subprocess.run([sys.executable, "-m", "service.healthcheck", "--address", server.address,
                            "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key",
                            str(pki.client_key)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING"), probe.stderr


@pytest.mark.parametrize("case", ["garbage-cert", "mismatched-key", "encrypted-key", "garbage-ca",
                                  "key-is-a-directory"])
def test_bad_tls_files_are_a_clear_startup_error(case: str, pki: Pki, repo: Path, tmp_path: Path, caplog, capsys) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    flags = {"garbage-cert": ["--tls-cert", str(garbage), "--tls-key", str(pki.server_key)],
             "mismatched-key": ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)],
             "encrypted-key": ["--tls-cert", str(pki.server_cert), "--tls-key", str(encrypted)],
             "garbage-ca": ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                            "--tls-client-ca", str(garbage)],
             "key-is-a-directory": ["--tls-cert", str(pki.server_cert), "--tls-key", str(tmp_path)]}[case]
    expected = {"garbage-cert": "tls_cert=.*not a PEM file",
                "mismatched-key": "not a usable certificate and matching unencrypted private key",
                "encrypted-key": "not a usable certificate and matching unencrypted private key",
                "garbage-ca": "tls_client_ca=.*not a PEM file",
                "key-is-a-directory": "tls_key=.*file does not exist"}[case]
    argv = ["--model-repository", str(repo), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
            "--providers", "cpu", *flags]
    assert service_main.main(argv) == 2  # SettingsError is printed, RuntimeConfigError logged
    shown = caplog.text + capsys.readouterr().err
    assert re.search(expected, shown), shown
