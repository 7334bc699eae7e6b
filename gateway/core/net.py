"""Host-name rules shared by every place that decides whether traffic may go unencrypted."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True when ``host`` can only mean this machine, where plaintext cannot be sniffed."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
