"""The PostgreSQL store's upstream leases and the fence check its ledger writes run.

:class:`~gateway.store.leases.Leases` on the ``upstream_lease`` table (schema version 7):
one row per upstream, whose ``expires_at`` is always computed and compared by the
database (``clock_timestamp()``), never by a node, so nodes with skewed clocks still
agree on who holds what. Each operation is one statement in autocommit, atomic on its
own: two nodes acquiring at once serialise on the row (``INSERT ... ON CONFLICT DO
UPDATE ... WHERE``), and only one of them gets a token.

The token grows on every acquisition (by another node after expiry or release, or by
this node again, say after a restart), never on a renewal; the row is kept on release
so it never starts over. :meth:`PGLeases._fenced_write` is the ledger's transaction with
the fence checked first and again, locking the lease row (``SELECT ... FOR SHARE``), as
its last statement before COMMIT: a node taking the lease over waits for that commit, and
a fenced write whose lease has moved on (or expired) raises
:class:`~gateway.store.errors.LeaseLost` and commits nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import structlog

from gateway.store.leases import Fence, Lease, current_fence, lost
from gateway.store.postgres.connection import PGConnection

log = structlog.get_logger("gateway.store.postgres")

_HOLDS = (
    "SELECT 1 FROM upstream_lease WHERE upstream = %s AND node = %s AND token = %s"
    " AND expires_at > clock_timestamp()"
)
"""The fence predicate: the lease still names this node and token and has not expired."""


class PGLeases(PGConnection):
    """:class:`~gateway.store.leases.Leases` on PostgreSQL (module docstring)."""

    expiring = True

    def try_acquire(self, upstream: str, node: str, lease_seconds: float) -> int | None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO upstream_lease AS l (upstream, node, token, acquired_at, expires_at)"
                " VALUES (%s, %s, 1, clock_timestamp(),"
                " clock_timestamp() + make_interval(secs => %s))"
                " ON CONFLICT (upstream) DO UPDATE SET node = excluded.node,"
                " token = l.token + 1, acquired_at = excluded.acquired_at,"
                " expires_at = excluded.expires_at"
                " WHERE l.node = excluded.node OR l.expires_at <= clock_timestamp()"
                " RETURNING token",
                (upstream, node, float(lease_seconds)),
            )
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def renew(self, upstream: str, node: str, token: int, lease_seconds: float) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE upstream_lease"
                " SET expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE upstream = %s AND node = %s AND token = %s RETURNING 1",
                (float(lease_seconds), upstream, node, token),
            )
            return cur.fetchone() is not None

    def release(self, upstream: str, node: str, token: int) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE upstream_lease SET expires_at = clock_timestamp()"
                " WHERE upstream = %s AND node = %s AND token = %s"
                " AND expires_at > clock_timestamp() RETURNING 1",
                (upstream, node, token),
            )
            return cur.fetchone() is not None

    def holders(self) -> list[Lease]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT upstream, node, token,"
                " extract(epoch FROM expires_at - clock_timestamp())::float8,"
                " expires_at > clock_timestamp()"
                ' FROM upstream_lease ORDER BY upstream COLLATE "C"'
            )
            rows = cur.fetchall()
        return [
            Lease(upstream=u, node=n, token=int(t), expires_in=float(e), held=bool(h))
            for u, n, t, e, h in rows
        ]

    def check_fence(self, fence: Fence) -> None:
        with self._cursor() as cur:
            cur.execute(_HOLDS, (fence.upstream, fence.node, fence.token))
            if cur.fetchone() is None:
                raise lost(fence)

    # ---- fenced writes -------------------------------------------------------------

    def _check_fence(self, cur: psycopg.Cursor, *, lock: bool) -> None:
        """Inside a write transaction: if a fence is set for this call, raise LeaseLost
        unless it still holds; with ``lock``, also lock the lease row (FOR SHARE: a
        takeover, and this node's own renewal, wait for this commit)."""
        fence = current_fence()
        if fence is None:
            return
        sql = _HOLDS + " FOR SHARE" if lock else _HOLDS
        cur.execute(sql, (fence.upstream, fence.node, fence.token))
        if cur.fetchone() is None:
            log.warning(
                "store.fenced_write_refused",
                upstream=fence.upstream,
                node=fence.node,
                token=fence.token,
            )
            raise lost(fence, "a fenced write was refused")

    @contextmanager
    def _fenced_write(self) -> Iterator[tuple[psycopg.Cursor, set[int]]]:
        """:meth:`_write` with the fence checked first (a stale node fails before doing
        any work) and again, locking the lease row, as the last statement before COMMIT.

        The lock is taken last on purpose: held from the start, it would make every
        renewal and takeover attempt wait for the whole batch (hundreds of messages
        inserted and indexed), long enough on a busy machine for the holder to give the
        lease up as unrenewed. Held only for the COMMIT, it still means the lease held
        when the transaction committed: a takeover after the check waits for the commit,
        and its pass then reads the ledger rows this one wrote."""
        with self._write() as (cur, changed):
            self._check_fence(cur, lock=False)
            yield cur, changed
            self._check_fence(cur, lock=True)
