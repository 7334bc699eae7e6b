"""Free TCP ports on the loopback address, for servers started by tests."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel tests do not collide on a fixed
    number. The socket is closed before returning, so another process may take the port
    before the caller binds it: callers that start external servers retry on "address in
    use" rather than trusting this blindly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
