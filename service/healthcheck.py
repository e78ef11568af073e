"""gRPC health probe: ``python -m service.healthcheck --address HOST:PORT [--service NAME]``.

Exits 0 when the service (overall "" by default, or a model name) is SERVING, 1 otherwise
(NOT_SERVING, unknown service, unreachable, timeout). Used by container health checks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 2.0, ca_file: str | None = None) -> str:
    """Returns the serving status name, or an error description."""
    if ca_file:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(ca_file).read_bytes()))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details() or ''}".strip()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textclf healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:8001")
    parser.add_argument("--service", default="", help='service or model name ("" = the whole server)')
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--tls-ca", default=None, help="PEM CA to verify a TLS server")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    status = check(args.address, args.service, args.timeout, args.tls_ca)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
