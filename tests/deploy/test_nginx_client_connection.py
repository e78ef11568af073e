"""nginx names each call's own client connection for the replicas (docs/deployment.md).

nginx reuses its upstream connections for many clients, so the replicas' per-connection rule
(``refuse_unread_after``) keys on the ``x-client-connection`` metadata nginx sets instead
(``client_connection_header`` in docker-compose.yml). This runs the real nginx (Debian) with the
repo's deploy/nginx/nginx.conf in front of a gRPC server that answers each call with the values of
that metadata it received, and checks: one value per call, the client's own address:port (the same
for the calls of one client connection, different for another), a value the client sent itself
replaced; and that compose's setting names that very header.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.support.deploy_env import REPO, compose_service, env_of, render_nginx, require_tools
from tests.support.ports import free_port
from tests.support.traffic import wait_for

pytestmark = pytest.mark.timeout(120)

ECHO = "/test.Echo/Headers"


def _nginx_header() -> str:
    config = (REPO / "deploy" / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    found = re.findall(r"grpc_set_header\s+(\S+)\s+\$remote_addr:\$remote_port;", config)
    assert len(found) == 1, "deploy/nginx/nginx.conf should set one header to $remote_addr:$remote_port"
    return found[0].lower()


def test_compose_keys_refusals_on_the_header_nginx_sets() -> None:
    env = env_of(compose_service("textclf"))
    assert env.get("TEXTCLF_CLIENT_CONNECTION_HEADER") == _nginx_header()
    assert "TEXTCLF_REFUSE_UNREAD_AFTER" not in env, "with the header, compose keeps the default rule"


class _EchoHeaders(grpc.GenericRpcHandler):
    def __init__(self, header: str) -> None:
        self.header = header

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != ECHO:
            return None
        values = [value for key, value in details.invocation_metadata if key == self.header]
        return grpc.unary_unary_rpc_method_handler(lambda request, context: "\n".join(values).encode())


@pytest.fixture(scope="module")
def through_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import subprocess

    tools = require_tools("nginx")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_EchoHeaders(_nginx_header()),))
    upstream_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    work = tmp_path_factory.mktemp("nginx-client-connection")
    grpc_port, status_port = free_port(), free_port()
    config = render_nginx(work, [f"127.0.0.1:{upstream_port}"], grpc_port, status_port)
    nginx = subprocess.Popen([tools["nginx"], "-p", str(work), "-c", str(config), "-e", str(work / "error.log"),
                              "-g", f"pid {work / 'nginx.pid'}; daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{grpc_port}"

        def answers() -> bool:
            try:
                with grpc.insecure_channel(address) as channel:
                    channel.unary_unary(ECHO)(b"", timeout=2)
                return True
            except grpc.RpcError:
                return False

        wait_for(answers, 30, "nginx to pass calls to the echo server",
                 alive=lambda: nginx.poll() is None or pytest.fail((work / "error.log").read_text()))
        yield address
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        server.stop(None)


def _own_connection(address: str) -> grpc.Channel:
    """A channel with a connection of its own (grpcio shares subchannels between equal channels)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_nginx_names_each_client_connection_and_replaces_a_value_the_client_sent(through_nginx: str) -> None:
    header = _nginx_header()
    with _own_connection(through_nginx) as first, _own_connection(through_nginx) as second:
        echo_first, echo_second = first.unary_unary(ECHO), second.unary_unary(ECHO)
        seen_first = {echo_first(b"", timeout=5).decode() for _ in range(3)}
        seen_second = echo_second(b"", timeout=5).decode()
        forged = echo_second(b"", timeout=5, metadata=((header, "203.0.113.9:4242"),)).decode()
    assert len(seen_first) == 1, f"one client connection, several names: {seen_first}"
    (name_first,) = seen_first
    for name in (name_first, seen_second, forged):
        assert re.fullmatch(r"127\.0\.0\.1:\d+", name), f"not one address:port value: {name!r}"
    assert name_first != seen_second, "two client connections got the same name"
    assert forged == seen_second, "the value the client sent reached the server"
