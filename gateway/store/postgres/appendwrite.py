"""APPEND on PostgreSQL in one statement, and what it tells the node's change log.

APPEND (RFC 3501 §6.3.11) is 5% of the 50-client bench's commands but took 21% of the
store threads' time in PostgreSQL mode (bench/README.md, "PostgreSQL mix tail, session
4"): the shared write algorithm (:meth:`~gateway.store.steps.MessageSteps.append_many` on
``_pipelined_write``) waits for four round trips (BEGIN with the mailbox lock, the
message row's id, the new UID and modseq, then the other rows with the notice and
COMMIT), and the session's catch-up right after it queried again, since the commit
outdated the node's change log. Here one message APPENDed to a mailbox the node knows is
not shared is one statement in autocommit (:data:`APPEND_ONE`, a chain of data-modifying
CTEs, one implicit transaction):

- ``UPDATE mailbox ... RETURNING`` takes the UID and the new modseq and holds the
  mailbox row's lock to the commit, as ``_alloc_uids`` does: two nodes appending to one
  mailbox take turns on that row, the second re-reading the first's counters (READ
  COMMITTED's re-check of an updated row), so they never share a UID and modseqs rise
  in commit order (issue 13). Its ``uidnext <= MAX_UID`` term refuses an exhausted UID
  space before anything is written.
- Every other row is inserted ``FROM`` that update (and the message row), so a missing
  mailbox inserts nothing at all.
- ``pg_notify`` runs once per inserted row (one), inside the transaction: other nodes
  hear it only once it commits (:mod:`gateway.store.postgres.changes`).

After the commit the change log of the mailbox learns the new row
(:meth:`~gateway.store.postgres.catchup.ChangeLogs.wrote`, with its \\Recent: the
session's catch-up claims it and the log forgets it, ``ChangeLogs.claimed``), so the
appending session's catch-up, and the other sessions' on this node, need no query.

MULTIAPPEND (several messages), a shared mailbox (private \\Seen rows) and a mailbox the
node has not looked at yet take the shared algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.message.analysis import Analysis
from gateway.store.errors import MailboxNotFound, StoreError
from gateway.store.interfaces import MessageRow, NewMessage
from gateway.store.postgres.changes import encode
from gateway.store.postgres.messagerows import MESSAGE_CTES, message_params
from gateway.store.postgres.rows import PGRows
from gateway.store.rowdata import split_seen
from gateway.store.rules import MAX_UID, flag_map
from gateway.store.steps import MessageSteps

APPEND_ONE = (
    "WITH box AS ("
    " UPDATE mailbox SET highestmodseq = highestmodseq + 1, uidnext = uidnext + 1"
    " WHERE id = %s AND uidnext <= %s RETURNING highestmodseq, uidnext - 1 AS uid),"
    + MESSAGE_CTES.format(source="box")
    + ","
    " row AS (INSERT INTO mailbox_message"
    " (mailbox_id, uid, message_id, flags, modseq, recent, savedate)"
    " SELECT %s, box.uid, msg.id, %s::text, box.highestmodseq, %s::int, %s::bigint FROM box, msg"
    " RETURNING uid, modseq)"
    " SELECT row.uid, row.modseq, pg_notify(%s, %s)::text FROM row"
)
"""One message into one mailbox, one statement: the parameters are
:func:`append_params`'s."""


def append_params(
    mailbox_id: int,
    raw: Any,
    analysis: Analysis,
    internal: tuple[int, int, int],
    flags_text: str,
    saved: int,
    channel: str,
    payload: str,
    recent: bool = True,
) -> list[object]:
    """The parameters of :data:`APPEND_ONE`: the rows ``_insert_message`` and
    ``_add_rows`` write (:func:`~gateway.store.rowdata.message_values`, the sort key
    row), text cleaned for PostgreSQL alike (:func:`~gateway.store.postgres.text.pg_text`);
    ``recent`` is the row's \\Recent bit."""
    return [
        mailbox_id,
        MAX_UID,
        *message_params(raw, analysis, internal),
        mailbox_id,
        flags_text,
        int(recent),
        saved,
        channel,
        payload,
    ]


class PGAppendWrites(PGRows, MessageSteps):
    """:meth:`append_many` for :class:`~gateway.store.postgres.messages.PGMessages`."""

    def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[NewMessage],
        *,
        viewer: str | None = None,
        claim_recent: bool = False,
    ) -> list[int]:
        if len(messages) != 1 or self._shared_ids.get(mailbox_id) is not False:
            return MessageSteps.append_many(
                self, mailbox_id, messages, viewer=viewer, claim_recent=claim_recent
            )
        (item,) = messages
        text, _seen = split_seen(flag_map(item.flags), False)
        raw, analysis, internal = self._ingest(item.raw, item.internaldate)
        (payload,) = encode(self.origin, [mailbox_id])
        params = append_params(
            mailbox_id,
            raw,
            analysis,
            internal,
            text,
            int(self._clock()),
            self.channel,
            payload,
            recent=not claim_recent,
        )
        with self._cursor() as cur:
            cur.execute(APPEND_ONE, params)
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT uidnext FROM mailbox WHERE id = %s", (mailbox_id,))
                if cur.fetchone() is None:
                    raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
                raise StoreError("UID space of the mailbox exhausted")
        uid, modseq = int(row[0]), int(row[1])
        added = [MessageRow(uid, self._flags(text, int(not claim_recent)), modseq)]
        self.change_logs.wrote(self._log_key(mailbox_id, viewer), modseq - 1, modseq, added)
        self._tell_listeners([mailbox_id])
        return [uid]
