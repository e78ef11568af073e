"""Loopback ports for child processes that must be told their port before they start (nginx,
Prometheus, peers, replicas restarted on the same port)."""
from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_RANGE = (32768, 60999)
FIXED_PORTS_FROM = 20000  # below the ephemeral range: only explicit binds ever take these
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands to port-0 binds and to outgoing connections."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_RANGE
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port for a child process to bind later, which nothing else takes meanwhile.

    Not a port-0 pick: those come from the ephemeral range, which the kernel also gives every
    outgoing connection, so any loopback client (nginx's upstream connections, another test's
    channel) could take the port between this check and the child's bind, or while a replica is
    restarted on it. CI saw exactly that (EADDRINUSE at start-up). Ports below the ephemeral
    range are only taken by explicit binds, and this process never hands one out twice.
    """
    low, _ = ephemeral_port_range()
    candidates = list(range(FIXED_PORTS_FROM, low)) or list(range(1024, low))
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port below the ephemeral range {low}")
