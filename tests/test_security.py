"""Security (issue 5): TLS and mutual TLS, the repository-control bearer token and containment,
listen addresses, log hygiene, and what the service may load.

Real servers on 127.0.0.1 (port 0) with real clients: ``TextclfClient``, raw gRPC stubs,
``tritonclient.grpc``, the health probe and the CLIs; a throwaway PKI is made with
``cryptography`` in a temporary directory. docs/security.md describes what these tests prove.
"""
from __future__ import annotations

import ast
import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.utils import InferenceServerException

from client import cli as classify_cli
from client.client import TextclfClient
from service import __main__ as service_main
from service import healthcheck
from service.settings import Settings, SettingsError, load_settings
from tests.service.conftest import ServerThread, metric, scrape
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.service_process import ServiceProcess
from textclf_protos.inference import grpc_service_pb2 as kpb, grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-control-token-for-tests"
AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)


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


# ----------------------------------------------------------------------------- servers

def _settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
                                  model_repository=str(root), providers="cpu", grace_period=1.0,
                                  intra_op_threads=1, max_queue_delay_ms=0.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_onnx_bundle(root, name="news", version=1, seed=1)
    return root


@pytest.fixture
def start(repo: Path) -> Iterator[Any]:
    started: list[ServerThread] = []

    def run(root: Path | None = None, **overrides: Any) -> ServerThread:
        server = ServerThread(_settings(root or repo, **overrides)).start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def _classify(client: TextclfClient) -> int:
    return client.classify(["the market rallied"], "news").version


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ----------------------------------------------------------------------------- TLS / mTLS

def test_tls_answers_tls_clients_and_refuses_plaintext(start, pki: Pki) -> None:
    server = start(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with TextclfClient(server.address, retry=False, tls_ca=str(pki.ca)) as client:
        assert _classify(client) == 1
    with TextclfClient(f"localhost:{server.app.port}", retry=False, tls_ca=str(pki.ca)) as client:
        assert _classify(client) == 1  # the SAN covers localhost too
    with TextclfClient(server.address, retry=False, timeout=5) as plaintext:
        assert _refused(lambda: _classify(plaintext)).code() == grpc.StatusCode.UNAVAILABLE
    with TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.other_ca)) as wrong_ca:
        assert _refused(lambda: _classify(wrong_ca)).code() == grpc.StatusCode.UNAVAILABLE  # server not trusted
    with triton.InferenceServerClient(server.address, ssl=True, root_certificates=str(pki.ca)) as kserve:
        assert kserve.is_server_ready()
    assert healthcheck.main(["--address", server.address, "--tls-ca", str(pki.ca)]) == 0
    assert healthcheck.main(["--address", server.address, "--timeout", "3"]) == 1


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(start, pki: Pki, capsys) -> None:
    server = start(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    with TextclfClient(server.address, retry=False, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                       tls_key=str(pki.client_key)) as client:
        assert _classify(client) == 1
    no_cert = TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.ca))
    other_ca = TextclfClient(server.address, retry=False, timeout=5, tls_ca=str(pki.ca),
                             tls_cert=str(pki.other_client_cert), tls_key=str(pki.other_client_key))
    plaintext = TextclfClient(server.address, retry=False, timeout=5)
    for refused in (no_cert, other_ca, plaintext):
        with refused:
            assert _refused(lambda: _classify(refused)).code() == grpc.StatusCode.UNAVAILABLE
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



# ----------------------------------------------------------------------------- repository control

def test_control_is_off_by_default_and_answers_unimplemented(start) -> None:
    defaults = load_settings([], environ={})
    assert defaults.repository_control is False
    server = start()
    with triton.InferenceServerClient(server.address) as kserve:
        for call in (lambda: kserve.load_model("news", headers=dict(AUTHORIZED)),
                     lambda: kserve.unload_model("news", headers=dict(AUTHORIZED)),
                     lambda: kserve.load_model("news")):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNIMPLEMENTED"
            assert "repository control (load/unload) is disabled" in info.value.message()
        assert kserve.is_model_ready("news")  # nothing was unloaded
        assert {m["name"] for m in kserve.get_model_repository_index(as_json=True)["models"]} == {"news"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"repository_control": True}, "needs a bearer token: set control_token (TEXTCLF_CONTROL_TOKEN)"),
    ({"repository_control": True, "control_token": "short-SENTINEL"}, "must be at least 16 characters"),
    ({"repository_control": True, "control_token": TOKEN, "control_token_file": __file__}, "set one, not both"),
    ({"repository_control": True, "control_token_file": "/nonexistent/token"}, "control_token_file='/nonexistent"),
])
def test_control_settings_need_a_token_and_never_show_it(overrides, message, repo: Path) -> None:
    with pytest.raises(SettingsError) as info:
        _settings(repo, **overrides)
    assert message in str(info.value)
    assert "SENTINEL" not in str(info.value) and TOKEN not in str(info.value)
    shown = repr(_settings(repo, repository_control=True, control_token=TOKEN))
    assert TOKEN not in shown  # repr(settings) hides the token


def test_control_token_from_env_or_file(repo: Path, tmp_path: Path) -> None:
    from_env = load_settings(["--repository-control"], environ={"TEXTCLF_CONTROL_TOKEN": TOKEN})
    assert from_env.read_control_token() == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    from_file = load_settings(["--repository-control", "--control-token-file", str(token_file)], environ={})
    assert from_file.read_control_token() == TOKEN
    token_file.write_text("short\n")
    with pytest.raises(SettingsError, match="at least 16 characters") as info:
        from_file.read_control_token()
    assert "short" not in str(info.value).replace("too short", "")


@pytest.fixture
def controlled(start, repo: Path) -> ServerThread:
    return start(repository_control=True, control_token=TOKEN)


def test_control_needs_the_bearer_token_through_tritonclient(controlled: ServerThread, repo: Path) -> None:
    make_onnx_bundle(repo, name="extra", version=1, seed=3)
    with triton.InferenceServerClient(controlled.address) as kserve:
        cases = [({}, "StatusCode.UNAUTHENTICATED", "needs a bearer token"),
                 ({"authorization": "Bearer not-the-token-but-long"}, "StatusCode.PERMISSION_DENIED", "not valid"),
                 ({"authorization": f"Basic {TOKEN}"}, "StatusCode.UNAUTHENTICATED", "expected 'Bearer <token>'"),
                 ({"authorization": f"Bearer {TOKEN}x"}, "StatusCode.PERMISSION_DENIED", "not valid"),
                 ({"authorization": f"Bearer {TOKEN[:-1]}"}, "StatusCode.PERMISSION_DENIED", "not valid")]
        for headers, status, message in cases:
            for call in (lambda: kserve.load_model("extra", headers=headers),
                         lambda: kserve.unload_model("news", headers=headers)):
                with pytest.raises(InferenceServerException) as info:
                    call()
                assert (info.value.status(), message in info.value.message()) == (status, True), headers
        assert not kserve.is_model_ready("extra") and kserve.is_model_ready("news")
        kserve.load_model("extra", headers=dict(AUTHORIZED))
        assert kserve.is_model_ready("extra", "1")
        kserve.unload_model("extra", headers={"authorization": f"bearer {TOKEN}"})  # scheme case-insensitive
        assert not kserve.is_model_ready("extra")
    samples = scrape(controlled.metrics_url)
    for code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        assert metric(samples, "textclf_requests_total", api="kserve.RepositoryModelLoad", code=code) >= 2


def test_control_with_raw_stubs_checks_the_token_before_the_request(controlled: ServerThread) -> None:
    with grpc.insecure_channel(controlled.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        hostile = kpb.RepositoryModelLoadRequest(model_name="../../etc")

        def load(request, metadata=None):
            return stub.RepositoryModelLoad(request, metadata=metadata, timeout=10)

        assert _refused(lambda: load(hostile)).code() == grpc.StatusCode.UNAUTHENTICATED
        two = (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}"))
        assert _refused(lambda: load(hostile, two)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert _refused(lambda: load(hostile, (("authorization", "Bearer"),))).code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer " + "x" * len(TOKEN)),)
        assert _refused(lambda: load(hostile, wrong)).code() == grpc.StatusCode.PERMISSION_DENIED
        for name in ("../news", "/etc/passwd", "news/1", "news\x00", "N" * 100, ".hidden", ""):
            error = _refused(lambda: load(kpb.RepositoryModelLoadRequest(model_name=name), AUTHORIZED))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        error = _refused(lambda: load(kpb.RepositoryModelLoadRequest(model_name="absent"), AUTHORIZED))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        load(kpb.RepositoryModelLoadRequest(model_name="news"), AUTHORIZED)
        unload = kpb.RepositoryModelUnloadRequest(model_name="news")
        assert _refused(lambda: stub.RepositoryModelUnload(unload, timeout=10)).code() == grpc.StatusCode.UNAUTHENTICATED
        # the token is for the control RPCs only: inference needs none and ignores a wrong one
        textclf = pb_grpc.TextClassifierStub(channel)
        answer = textclf.Classify(pb.ClassifyRequest(model="news", texts=["x"]), metadata=wrong, timeout=10)
        assert answer.version == 1


def test_control_reaches_only_bundles_inside_the_repository(start, tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "outside"
    make_onnx_bundle(root, name="news", version=1, seed=1)
    make_onnx_bundle(outside, name="evil", version=1, seed=2)
    make_onnx_bundle(outside, name="elsewhere", version=5, seed=4)
    (root / "evil").symlink_to(outside / "evil", target_is_directory=True)  # model directory escapes
    (root / "news" / "2").symlink_to(outside / "elsewhere" / "5", target_is_directory=True)  # version escapes
    filey = make_onnx_bundle(root, name="filey", version=1, seed=5)
    (filey.path / "model.onnx").unlink()
    (filey.path / "model.onnx").symlink_to(outside / "evil" / "1" / "model.onnx")  # one file escapes
    goldy = make_onnx_bundle(root, name="goldy", version=1, seed=6)
    (outside / "secret.json").write_text("{}", encoding="utf-8")
    (goldy.path / "golden.json").symlink_to(outside / "secret.json")  # an optional file escapes too
    server = start(root, repository_control=True, control_token=TOKEN)
    assert server.app.core.model_versions("news") == [1]  # version 2 -> outside refused at start-up
    assert server.app.core.model_versions("evil") == [] and server.app.core.model_versions("filey") == []
    assert server.app.core.model_versions("goldy") == []
    with triton.InferenceServerClient(server.address) as kserve:
        reasons = {(m.name, m.version): m.reason for m in kserve.get_model_repository_index().models}
        assert "resolves outside the model repository" in reasons[("news", "2")]
        assert "model.onnx resolves outside the model repository" in reasons[("filey", "1")]
        assert "golden.json resolves outside the model repository" in reasons[("goldy", "1")]
        with pytest.raises(InferenceServerException) as info:
            kserve.load_model("evil", headers=dict(AUTHORIZED))
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "outside the model repository" in info.value.message() and str(outside) not in info.value.message()
        for name in ("news", "filey"):
            with pytest.raises(InferenceServerException) as info:
                kserve.load_model(name, headers=dict(AUTHORIZED))
            assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
            assert "resolves outside the model repository" in info.value.message()
        assert not kserve.is_model_ready("evil") and kserve.is_model_ready("news", "1")
        assert not kserve.is_model_ready("news", "2")


# ----------------------------------------------------------------------------- binding

def _loopback_alias_available() -> bool:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _loopback_alias_available(), reason="127.0.0.2 is not a local address here")
def test_grpc_and_metrics_bind_to_the_configured_addresses(start) -> None:
    server = start(host="127.0.0.1", metrics_host="127.0.0.2")
    grpc_port, metrics_port = server.app.port, server.app.metrics_port
    assert _accepts("127.0.0.1", grpc_port) and not _accepts("127.0.0.2", grpc_port)
    assert _accepts("127.0.0.2", metrics_port) and not _accepts("127.0.0.1", metrics_port)
    with urllib.request.urlopen(f"http://127.0.0.2:{metrics_port}/metrics", timeout=5) as response:
        assert b"textclf_model_loaded" in response.read()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    with TextclfClient(server.address, retry=False) as client:  # health is on the gRPC address
        assert _classify(client) == 1
    assert healthcheck.main(["--address", server.address]) == 0
    assert healthcheck.main(["--address", f"127.0.0.2:{grpc_port}", "--timeout", "2"]) == 1
    other = start(host="127.0.0.2", metrics_port=-1)
    assert _accepts("127.0.0.2", other.app.port) and not _accepts("127.0.0.1", other.app.port)
    assert other.app.metrics_port is None


# ----------------------------------------------------------------------------- log hygiene

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
            outcomes.append(_refused(lambda: client.classify([too_long], "news")).code().name)
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


# ----------------------------------------------------------------------------- what is loaded

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def _python_files() -> list[Path]:
    files = [p for d in ("service", "bundle", "client") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10
    return files


def test_service_and_bundle_code_never_unpickle_or_evaluate() -> None:
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
                problems.append(f"{where}: from {node.module} import")
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
                    problems.append(f"{where}:{node.lineno}: {func.id}()")
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    dotted = f"{func.value.id}.{func.attr}"
                    if dotted in {"yaml.load", "yaml.unsafe_load", "torch.load", "pickle.load", "pickle.loads"}:
                        problems.append(f"{where}:{node.lineno}: {dotted}()")
                    if func.attr == "load" and func.value.id in {"np", "numpy"} and any(
                            k.arg == "allow_pickle" for k in node.keywords):
                        problems.append(f"{where}:{node.lineno}: np.load(allow_pickle=...)")
    assert problems == []


def test_bundles_hold_only_onnx_and_json() -> None:
    from bundle.card import BUNDLE_FILES, MODEL_FILE, TOKENIZER_FILE

    assert {Path(f).suffix for f in BUNDLE_FILES} == {".onnx", ".json"}
    runtime = (ROOT / "service" / "runtime.py").read_text(encoding="utf-8")
    assert "InferenceSession" in runtime and MODEL_FILE == "model.onnx" and TOKENIZER_FILE == "tokenizer.json"
    tokenization = (ROOT / "bundle" / "tokenization.py").read_text(encoding="utf-8")
    assert "from tokenizers import" in tokenization and "Tokenizer.from_str" in tokenization


class _Payload:
    """Unpickling this would run code: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_with_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import pickle

    from training.checkpoint import load_checkpoint

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "textclf-checkpoint/1", "state_dict": {}, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path)
    assert not marker.exists()  # refused before anything was constructed
    loads, unsafe = 0, []
    for directory in ("training", "export", "pipeline", "bench", "service", "bundle"):
        for source in sorted((ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    loads += 1
                    weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                    if not (weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True):
                        unsafe.append(f"{source.relative_to(ROOT)}:{node.lineno}")
    assert loads >= 3 and unsafe == [], unsafe


def test_security_doc_names_real_settings() -> None:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    fields = Settings.model_fields
    for name in ("tls_cert", "tls_key", "tls_client_ca", "repository_control", "control_token", "control_token_file",
                 "host", "metrics_host", "metrics_port", "log_request_texts", "log_level"):
        assert name in fields and f"`{name}" in doc, name
    for flag in ("--tls-ca", "--tls-cert", "--tls-key", "--repository-control", "--control-token-file"):
        assert flag in doc, flag
