"""grpc.health.v1 (overall and per model), the health probe CLI, and server reflection."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from service import healthcheck
from service.errors import NotFound

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_overall_and_per_model(bundles, start_server) -> None:
    server = start_server(repository_control=True, control_token="health-tests-control-token")
    assert check(server.address, "") == SERVING
    assert check(server.address, "news") == SERVING
    assert check(server.address, "textclf.v1.TextClassifier") == SERVING
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="news"), timeout=10)
        assert next(watch).status == SERVING
        server.call(server.app.core.unload_model("news"))
        assert next(watch).status == NOT_SERVING  # awaited through Watch, not by sleeping
        watch.cancel()
    assert check(server.address, "") == SERVING
    try:
        server.call(server.app.core.unload_model("news"))
        raise AssertionError("unloading twice must fail")
    except NotFound as exc:
        assert "not loaded" in exc.message
    server.call(server.app.core.load_model("news"))
    server.wait_event(lambda e: e.kind == "loaded" and e.name == "news")
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="news"), timeout=10)
        assert next(watch).status == SERVING
        watch.cancel()


def test_healthcheck_cli(server, capsys) -> None:
    assert healthcheck.main(["--address", server.address]) == 0
    assert healthcheck.main(["--address", server.address, "--service", "news"]) == 0
    assert healthcheck.main(["--address", server.address, "--service", "unknown-model"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out
    assert healthcheck.main(["--address", "127.0.0.1:1", "--timeout", "0.5"]) == 1


def test_reflection_lists_our_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"textclf.v1.TextClassifier", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        descriptor = database.FindFileContainingSymbol("textclf.v1.TextClassifier")
        assert descriptor.package == "textclf.v1"
    assert set(server.app.service_names) <= services
