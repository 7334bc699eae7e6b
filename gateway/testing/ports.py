"""Free TCP ports on the loopback address, for servers started by tests."""

from __future__ import annotations

import random
import socket

LOOPBACK = "127.0.0.1"

LOW_PORTS = (20000, 32000)
"""Where :func:`free_port` looks first: below Linux's default ephemeral range
(``net.ipv4.ip_local_port_range``, 32768-60999), whose ports the kernel hands to every
outgoing connection (a test's own clients, PostgreSQL's, Dovecot's). A port picked there
by ``bind(0)`` could be taken by such a connection before the server binds it, which
CI saw as "Address already in use" for a /metrics listener."""

_handed: set[int] = set()
"""Ports this process has returned already: two calls in a row never get the same one."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    A random port outside the kernel's ephemeral range (:data:`LOW_PORTS`), so parallel
    tests and outgoing connections do not take it meanwhile; the kernel's own pick
    (bind to port 0) if none is free there. The socket is closed before returning, so
    another process may still take the port before the caller binds it: callers that
    start external servers retry on "address in use" rather than trusting this blindly.
    """
    low, high = LOW_PORTS
    eph_low, eph_high = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(low, high)
        if eph_low <= port <= eph_high or port in _handed:
            continue
        if _bindable(port):
            _handed.add(port)
            return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed:
            _handed.add(port)
            return port
