"""The known-sources contract: the network sources each user logged in from, kept across
restarts so that the login penalty's lockout protection survives one.

The login penalty (:mod:`gateway.security.penalty`) exempts a source a user logged in
from before from that user's failure budget, so a password-spraying botnet cannot lock
the owner out of their usual address. Held only in memory, that protection was lost at
every restart (issue 20); this small table keeps it. A *source* is the penalty's key (an
IPv4 address, an IPv6 /64, or a UNIX socket's text); the store never interprets it, nor
the user name (the canonical login name).

Both bounds are the caller's to choose, per call, so the policy stays in one place (the
penalty): :meth:`KnownSources.remember_source` keeps at most ``keep`` sources per user
(the most recently seen) and forgets the user's sources last seen before
``forget_before``. Writes are atomic and durable like every store write; the SQLite
backend keeps them in the ``known_source`` table (schema version 4), the memory backend
in its :class:`~gateway.store.memory.MemoryState`. Both run inline (microseconds), and the
penalty writes at most once per (user, source) per hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class KnownSources(Protocol):
    """Per user: source → when the user last logged in from it (epoch seconds)."""

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None:
        """Record a login of ``user`` from ``source`` at ``seen`` (a later call for the
        same pair moves its time, never back). Then keep only the user's ``keep`` most
        recently seen sources (``keep`` ≥ 1), and none seen before ``forget_before``."""

    def known_sources(self, user: str) -> Mapping[str, float]:
        """The user's remembered sources and when each was last seen (empty if none)."""
