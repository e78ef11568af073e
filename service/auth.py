"""Bearer-token check for the repository-control RPCs (KServe RepositoryModelLoad/Unload).

The token comes from ``control_token`` / ``control_token_file`` (``Settings.read_control_token``);
clients send gRPC metadata ``authorization: Bearer <token>``. No metadata or a malformed one ->
``Unauthenticated``; a wrong token -> ``PermissionDenied``. The comparison is constant-time
(``hmac.compare_digest`` over the UTF-8 bytes) and neither the expected nor the presented token
ever appears in a message or a log line.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterable

from service.errors import PermissionDenied, Unauthenticated

AUTHORIZATION = "authorization"
SCHEME = "bearer"


def authorization_values(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str]:
    """Every ``authorization`` value in gRPC invocation metadata (keys are lower-case on the wire)."""
    values = []
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION:
            values.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return values


class ControlAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    def __repr__(self) -> str:
        return "ControlAuth(<token hidden>)"

    def check(self, authorization: list[str]) -> None:
        if not authorization:
            raise Unauthenticated("repository control needs a bearer token: send metadata "
                                  "'authorization: Bearer <token>'")
        if len(authorization) > 1:
            raise Unauthenticated("more than one 'authorization' metadata entry")
        scheme, _, credential = authorization[0].strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != SCHEME or not credential:
            raise Unauthenticated("malformed 'authorization' metadata: expected 'Bearer <token>'")
        if not self._token or not hmac.compare_digest(credential.encode("utf-8"), self._token):
            raise PermissionDenied("the repository control token is not valid")
