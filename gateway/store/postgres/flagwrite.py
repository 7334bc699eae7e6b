"""STORE on PostgreSQL in one or two round trips, and what it tells the node's change log.

In a mailbox the node knows is not shared, STORE is one call of a server-side function
(:mod:`gateway.store.postgres.flagfunction`: the lock, the flag arithmetic, the writes and
the notice in the database, one round trip). A shared mailbox (private \\Seen per
viewer) takes the two round trips below.

STORE is the mix's most frequent write (RFC 3501 §6.4.6; 15% of the 50-client bench's
commands). The shared write algorithm (:meth:`~gateway.store.steps.MessageSteps.store_flags`
on ``_pipelined_write``) waits for four round trips: BEGIN with the mailbox lock, the rows,
the new modseq, then the writes with COMMIT; and a STORE that changes nothing (``+FLAGS
\\Seen`` on a message already seen) still commits a transaction that holds a row lock,
which PostgreSQL makes durable (a WAL flush). Here, with the same locks, statements and
semantics:

1. ``BEGIN``, ``SELECT highestmodseq ... FOR UPDATE`` (the mailbox lock, on a cursor of
   its own) and the rows go out together: one round trip. The rows are read by a later
   statement than the lock, so under READ COMMITTED they see every write committed
   before the lock was granted, as before.
2. Nothing to write: ``ROLLBACK`` (nothing to make durable). Otherwise the new modseq is
   HIGHESTMODSEQ + 1 (the lock is held: no other writer can move it), so the mailbox
   update, the flag writes, the change notice and ``COMMIT`` go out together.

After the commit the node's change log of the mailbox learns the written rows
(:meth:`~gateway.store.postgres.catchup.ChangeLogs.wrote`): when it held everything up to
the HIGHESTMODSEQ read under the lock, it now holds this write too, so the session's own
catch-up, and the others' on this node, need no query.

Used once the node knows whether the mailbox is shared (any earlier read or write of it
tells); a first write takes the shared algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from psycopg.pq import TransactionStatus

from gateway.store.errors import MailboxNotFound
from gateway.store.interfaces import MessageFlags, MessageRow, StoreResult
from gateway.store.postgres.changes import encode
from gateway.store.postgres.flagfunction import (
    HEAD,
    LEFT_ALONE,
    REFUSED,
    STORE_FLAGS_CALL,
    WRITTEN,
)
from gateway.store.postgres.rows import FLAG_ROWS, PGRows, uid_array
from gateway.store.rowdata import plan_flags
from gateway.store.rules import flag_map
from gateway.store.steps import MessageSteps


class PGFlagWrites(PGRows, MessageSteps):
    """:meth:`store_flags` for :class:`~gateway.store.postgres.messages.PGMessages`."""

    def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Iterable[str],
        unchangedsince: int | None = None,
        *,
        viewer: str | None = None,
    ) -> StoreResult:
        shared = self._shared_ids.get(mailbox_id)
        if shared is None or mode not in ("", "+", "-"):
            return MessageSteps.store_flags(
                self, mailbox_id, uids, mode, flags, unchangedsince, viewer=viewer
            )
        given = flag_map(flags)
        if not shared:
            return self._store_in_database(mailbox_id, uids, mode, given, unchangedsince, viewer)
        with self._connection() as conn:
            done = False
            try:
                with conn.pipeline(), conn.cursor() as lock, conn.cursor() as cur:
                    cur.execute(b"BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
                    lock.execute(
                        "SELECT highestmodseq FROM mailbox WHERE id = %s FOR UPDATE",
                        (mailbox_id,),
                    )
                    private_of = viewer if shared else None
                    cur.execute(FLAG_ROWS, (private_of, mailbox_id, uid_array(uids)))
                    head = lock.fetchone()  # one round trip: BEGIN, the lock, the rows
                    if head is None:
                        raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
                    rows = cur.fetchall()
                    plan = plan_flags(rows, mode, given, unchangedsince, shared, viewer)
                    before = int(head[0])
                    modseq = before + 1
                    if plan.writes:
                        cur.execute(
                            "UPDATE mailbox SET highestmodseq = %s WHERE id = %s",
                            (modseq, mailbox_id),
                        )
                        self._write_flag_plan(cur, mailbox_id, plan, modseq, viewer)
                        for payload in encode(self.origin, [mailbox_id]):
                            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
                        if self.lazy_flags:  # flag_fsync = "optimized" (connection.py)
                            cur.execute(b"SET LOCAL synchronous_commit = off")
                        cur.execute(b"COMMIT")
                    else:
                        cur.execute(b"ROLLBACK")  # nothing written: nothing to make durable
                done = True
            finally:
                if not done and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
        unchanged = None if shared else plan.unchanged(rows, self._flags)
        if not plan.writes:
            return StoreResult(updated=[], modified=plan.modified, unchanged=unchanged)
        updated = plan.rows(modseq, self._flags)
        self.change_logs.wrote(self._log_key(mailbox_id, viewer), before, modseq, updated)
        self._tell_listeners([mailbox_id])
        return StoreResult(updated=updated, modified=plan.modified, unchanged=unchanged)

    def _store_in_database(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        given: dict[str, str],
        unchangedsince: int | None,
        viewer: str | None,
    ) -> StoreResult:
        """A mailbox that is not shared: one call of the server-side function
        (:mod:`gateway.store.postgres.flagfunction`), one round trip."""
        (payload,) = encode(self.origin, [mailbox_id])
        with self._cursor() as cur:
            cur.execute(
                STORE_FLAGS_CALL,
                (
                    mailbox_id,
                    uid_array(uids),
                    mode,
                    list(given),
                    list(given.values()),
                    unchangedsince,
                    self.lazy_flags,
                    self.channel,
                    payload,
                ),
            )
            rows = cur.fetchall()
        if not rows or rows[0][4] != HEAD:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        before = int(rows[0][3])
        flags = self._flags
        updated = [MessageRow(u, flags(t, r), m) for u, t, r, m, state in rows if state == WRITTEN]
        modified = [u for u, _t, _r, _m, state in rows if state == REFUSED]
        unchanged = [
            MessageFlags(u, flags(t, r), m) for u, t, r, m, state in rows if state == LEFT_ALONE
        ]
        if updated:
            self.change_logs.wrote(self._log_key(mailbox_id, viewer), before, before + 1, updated)
            self._tell_listeners([mailbox_id])
        return StoreResult(updated=updated, modified=modified, unchanged=unchanged)
