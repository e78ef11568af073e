"""Security (issue 5, issue 9): repository control (load/unload) is off by default, needs a bearer
token when on, checks it before the request bytes are parsed, and reaches only bundles inside
the repository.

Real servers on 127.0.0.1 (port 0) with real clients: ``tritonclient.grpc`` and raw gRPC stubs.
docs/security.md describes what these tests prove.
"""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.settings import SettingsError, load_settings
from tests.support.metrics import metric, scrape
from tests.support.onnx_bundle import make_onnx_bundle
from tests.support.security_server import (AUTHORIZED, TOKEN, repo, rpc_error, server_settings,  # noqa: F401 - repo
                                           start)
from tests.support.server_thread import ServerThread
from textclf_protos.inference import grpc_service_pb2 as kpb, grpc_service_pb2_grpc as kpb_grpc
from textclf_protos.textclf.v1 import textclf_pb2 as pb, textclf_pb2_grpc as pb_grpc

LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


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
        server_settings(repo, **overrides)
    assert message in str(info.value)
    assert "SENTINEL" not in str(info.value) and TOKEN not in str(info.value)
    shown = repr(server_settings(repo, repository_control=True, control_token=TOKEN))
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

        assert rpc_error(lambda: load(hostile)).code() == grpc.StatusCode.UNAUTHENTICATED
        two = (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}"))
        assert rpc_error(lambda: load(hostile, two)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_error(lambda: load(hostile, (("authorization", "Bearer"),))).code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer " + "x" * len(TOKEN)),)
        assert rpc_error(lambda: load(hostile, wrong)).code() == grpc.StatusCode.PERMISSION_DENIED
        for name in ("../news", "/etc/passwd", "news/1", "news\x00", "N" * 100, ".hidden", ""):
            error = rpc_error(lambda: load(kpb.RepositoryModelLoadRequest(model_name=name), AUTHORIZED))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        error = rpc_error(lambda: load(kpb.RepositoryModelLoadRequest(model_name="absent"), AUTHORIZED))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        load(kpb.RepositoryModelLoadRequest(model_name="news"), AUTHORIZED)
        unload = kpb.RepositoryModelUnloadRequest(model_name="news")
        assert rpc_error(lambda: stub.RepositoryModelUnload(unload, timeout=10)).code() == grpc.StatusCode.UNAUTHENTICATED
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


@pytest.mark.parametrize(("control", "metadata", "code"), [
    (False, AUTHORIZED, grpc.StatusCode.UNIMPLEMENTED),
    (True, (), grpc.StatusCode.UNAUTHENTICATED),
    (True, (("authorization", "Bearer " + "x" * len(TOKEN)),), grpc.StatusCode.PERMISSION_DENIED),
    (True, AUTHORIZED, grpc.StatusCode.INVALID_ARGUMENT),  # only now are the bytes parsed
], ids=["control-off", "no-token", "wrong-token", "right-token"])
def test_control_rpcs_check_the_token_before_parsing_the_request(bundles, start_server, control, metadata,
                                                                 code) -> None:
    server = start_server(repository_control=control, control_token=TOKEN if control else "")
    garbage = b"\xff\xff\xff\xff not a protobuf message"
    with grpc.insecure_channel(server.address) as channel:
        for method in (LOAD, LOAD.replace("Load", "Unload")):
            raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                raw(garbage, metadata=metadata, timeout=10)
            assert info.value.code() == code, (method, info.value)
    samples = scrape(server.metrics_url)
    assert metric(samples, "textclf_requests_total", api="kserve.RepositoryModelLoad", code=code.name) == 1
