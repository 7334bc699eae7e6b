"""Connection accounting shared by the IMAP, ManageSieve and submission servers: who the
peer is, and how many connections one address (and one user from one address) may hold.

A source holding too many connections is abuse or a broken client, so each server refuses
the next one before any per-connection state exists; once logged in, a user's connections
from one address are capped too (RFC 5530 ``LIMIT``, ManageSieve ``TRYLATER``). The counts
are keyed like the login penalties (:func:`~gateway.security.penalty.source_key`: an
IPv6 /64 is one source), and the limits are read from the factory's ``limits`` at each
check.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.security.penalty import source_key


class ConnectionCaps(Protocol):
    """The limit every server's limits object has (IMAPLimits, ManageSieveLimits, ...)."""

    @property
    def max_connections_per_ip(self) -> int:
        """Connections from one source; 0 means no limit."""
        ...


def peer_address(transport: Any) -> tuple[str, str]:
    """(host for accounting, "host:port" for logs); ("local", ...) for a UNIX socket or a
    transport that cannot say who its peer is."""
    try:
        peer = transport.getPeer()
    except Exception:
        return "local", "unknown"
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if not isinstance(host, str) or not host:
        return "local", str(peer)
    return host, f"{host}:{port}"


class ConnectionCounts:
    """Mixin for a server factory: counts connections per source and logged-in
    connections per (user, source) against ``self.limits``. ``max_connections_per_ip``
    is required; ``max_connections_per_user_ip`` is optional (absent: no per-user cap)."""

    limits: ConnectionCaps

    def __init__(self) -> None:
        super().__init__()
        self._per_source: dict[str, int] = {}
        self._per_user_source: dict[tuple[str, str], int] = {}

    def admit_source(self, host: str) -> bool:
        """Count a new connection from ``host``; False if it is one too many."""
        key = source_key(host)
        count = self._per_source.get(key, 0)
        limit = self.limits.max_connections_per_ip
        if limit and count >= limit:
            return False
        self._per_source[key] = count + 1
        return True

    def release_source(self, host: str) -> None:
        """A connection counted by :meth:`admit_source` ended."""
        _decrement(self._per_source, source_key(host))

    def take_user_slot(self, key: tuple[str, str]) -> bool:
        """Count one more logged-in connection of (user, address); False if over the limit."""
        count = self._per_user_source.get(key, 0)
        limit = getattr(self.limits, "max_connections_per_user_ip", 0)
        if limit and count >= limit:
            return False
        self._per_user_source[key] = count + 1
        return True

    def release_user_slot(self, key: tuple[str, str]) -> None:
        """A slot taken by :meth:`take_user_slot` is given back."""
        _decrement(self._per_user_source, key)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
