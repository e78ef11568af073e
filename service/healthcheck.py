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


def check(address: str, service: str = "", timeout: float = 2.0, ca_file: str | None = None,
          cert_file: str | None = None, key_file: str | None = None) -> str:
    """Returns the serving status name, or an error description. ``ca_file`` (or a client
    certificate alone, then with the system roots) makes it a TLS probe; ``cert_file`` +
    ``key_file`` are the client certificate for a server that requires mutual TLS."""
    if ca_file or cert_file or key_file:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
        channel = grpc.secure_channel(address, credentials)
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
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate (server with mutual TLS)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        status = check(args.address, args.service, args.timeout, args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
