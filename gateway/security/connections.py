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

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.protocol import Factory

from gateway.security.penalty import source_key


class ConnectionCaps(Protocol):
    """The limit every server's limits object has (IMAPLimits, ManageSieveLimits, ...)."""

    @property
    def max_connections_per_ip(self) -> int:
        """Connections from one source; 0 means no limit."""
        ...


@dataclass(frozen=True)
class ListenerPolicy:
    """What one listener adds to its server's shared factory (the same for IMAP,
    ManageSieve and submission): one factory counts and limits connections for all the
    listeners of a protocol, each listener says how its connections start."""

    implicit_tls: bool = False
    """Connections are TLS from their first byte (IMAPS, ``submissions``: RFC 8314 §3.3)."""

    plaintext_auth: bool | None = None
    """Passwords without TLS on this listener (a loopback one); None: the factory's
    ``allow_plaintext_auth``."""

    def plaintext_auth_or(self, default: bool) -> bool:
        """Whether passwords may be sent in the clear here, ``default`` unless set."""
        return self.plaintext_auth if self.plaintext_auth is not None else default


class ListenerFactory(Factory):
    """One listener's view of a server's shared factory: connections get this listener's
    :class:`ListenerPolicy` but share the shared factory's settings and connection counts.
    Subclasses name the connection class as ``protocol(shared, policy)``."""

    protocol: Any

    def __init__(self, shared: Any, policy: ListenerPolicy) -> None:
        self.shared = shared
        self.policy = policy

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol(self.shared, self.policy)


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
