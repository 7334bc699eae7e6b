"""In-memory upstream leases on a test clock: the PostgreSQL lease rules without a database.

:class:`ClockLeases` keeps the same rules as :mod:`gateway.store.postgres.leases` (the
token grows on every acquisition, never on a renewal; a released row is kept; expiry is
judged by one shared clock, the "database's") so that several pollers on one
:class:`twisted.internet.task.Clock` can be driven through acquisitions, takeovers and
lost leases deterministically. ``fail_with`` makes every call raise (a database that
cannot be reached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.store.leases import Fence, Lease, lost


@dataclass
class _Row:
    node: str
    token: int
    expires_at: float


class ClockLeases:
    """:class:`~gateway.store.leases.Leases` in memory, judged by ``now()``."""

    expiring = True
    runs_inline = True

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.rows: dict[str, _Row] = {}
        self.fail_with: Exception | None = None
        self.calls: list[tuple[str, str, str]] = []  # (operation, upstream, node)

    def _call(self, operation: str, upstream: str, node: str) -> None:
        self.calls.append((operation, upstream, node))
        if self.fail_with is not None:
            raise self.fail_with

    def try_acquire(self, upstream: str, node: str, lease_seconds: float) -> int | None:
        self._call("acquire", upstream, node)
        row = self.rows.get(upstream)
        if row is None:
            self.rows[upstream] = _Row(node, 1, self.now() + lease_seconds)
            return 1
        if row.node != node and row.expires_at > self.now():
            return None
        row.node, row.token, row.expires_at = node, row.token + 1, self.now() + lease_seconds
        return row.token

    def renew(self, upstream: str, node: str, token: int, lease_seconds: float) -> bool:
        self._call("renew", upstream, node)
        row = self.rows.get(upstream)
        if row is None or (row.node, row.token) != (node, token):
            return False
        row.expires_at = self.now() + lease_seconds
        return True

    def release(self, upstream: str, node: str, token: int) -> bool:
        self._call("release", upstream, node)
        row = self.rows.get(upstream)
        if row is None or (row.node, row.token) != (node, token) or row.expires_at <= self.now():
            return False
        row.expires_at = self.now()
        return True

    def holders(self) -> list[Lease]:
        now = self.now()
        return [
            Lease(u, r.node, r.token, r.expires_at - now, r.expires_at > now)
            for u, r in sorted(self.rows.items())
        ]

    def check_fence(self, fence: Fence) -> None:
        row = self.rows.get(fence.upstream)
        if (
            row is None
            or (row.node, row.token) != (fence.node, fence.token)
            or row.expires_at <= self.now()
        ):
            raise lost(fence)

    def holder(self, upstream: str) -> str | None:
        """The node holding ``upstream`` now, or None."""
        row = self.rows.get(upstream)
        return row.node if row is not None and row.expires_at > self.now() else None
