"""The SQLite store's SORT and THREAD reads (RFC 5256): one query each, ordered by SQLite.

The search criteria become the WHERE clause exactly as for SEARCH
(:func:`gateway.store.search.build_query`); the sort program becomes the ORDER BY
(:func:`gateway.store.sorting.order_by`) over the narrow ``sort_key`` rows computed at
ingest. A webmail client asks the same SORT on every list refresh, and most of the cost
of an answer is SQLite reading and joining 10,000 rows, not comparing keys: so the
whole mailbox's order under each of the last :data:`SORT_CACHE_ENTRIES` programs is kept
with the mailbox's membership (UIDVALIDITY, UIDNEXT, message count), as Dovecot keeps
sort order in its index. A message's keys never change (they come from its bytes), and
while UIDNEXT stands no UID was added, so an unchanged count means no expunge either:
the kept order is exact until a delivery, a COPY or an EXPUNGE moves one of them (a
flag change does not). A SORT with criteria other than ALL filters the kept order by
the criteria's matches, read in the same transaction.
"""

from __future__ import annotations

import json
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from gateway.core import criteria as c
from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.errors import MailboxNotFound
from gateway.store.sorting import THREAD_COLUMNS, order_by
from gateway.store.sqlite.rows import SQLiteRows

SORT_CACHE_ENTRIES = 8
"""Mailbox orders kept per store (each an ``array('I')`` of UIDs: 40 KB per 10,000
messages)."""

_Membership = tuple[int, int, int]
"""(UIDVALIDITY, UIDNEXT, message count): equal values mean the same set of UIDs."""

_CacheKey = tuple[int, str]
"""(mailbox id, ORDER BY text)."""


class SQLiteSorting(SQLiteRows):
    """:class:`~gateway.store.interfaces.Sorting` on SQLite."""

    _sort_cache: OrderedDict[_CacheKey, tuple[_Membership, array]] | None = None

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        """RFC 5256 §3 SORT: matching UIDs in sort order (the kept mailbox order while
        exact, filtered by the criteria's matches)."""
        order = order_by(program)
        if self._sort_cache is None:
            self._sort_cache = OrderedDict()
        cache = self._sort_cache
        key = (mailbox_id, order)
        with self._read() as conn:
            row = conn.execute(
                "SELECT uidvalidity, uidnext,"
                " (SELECT count(*) FROM mailbox_message WHERE mailbox_id = ?)"
                " FROM mailbox WHERE id = ?",
                (mailbox_id, mailbox_id),
            ).fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            membership = (int(row[0]), int(row[1]), int(row[2]))
            kept = cache.get(key)
            if kept is not None and kept[0] == membership:
                cache.move_to_end(key)
                ordered = kept[1]
            else:
                # Keys and membership do not depend on the viewer (only flags do).
                rows = self._sorted_in(conn, mailbox_id, c.All(), "mm.uid", order, None)
                ordered = array("I", [r[0] for r in rows])
                cache[key] = (membership, ordered)
                while len(cache) > SORT_CACHE_ENTRIES:
                    cache.popitem(last=False)
            if isinstance(criteria, c.All):
                return ordered.tolist()
            matched = {
                r[0]
                for r in self._sorted_in(conn, mailbox_id, criteria, "mm.uid", "mm.uid", viewer)
            }
        return [uid for uid in ordered if uid in matched]

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        """RFC 5256 §3 THREAD input: the matching messages' facts, ascending UID."""
        with self._read() as conn:
            self._require(conn, mailbox_id)
            rows = self._sorted_in(conn, mailbox_id, criteria, THREAD_COLUMNS, "mm.uid", viewer)
        return [
            ThreadFacts(uid, sent, subject, bool(refwd), msgid, tuple(json.loads(refs)))
            for uid, sent, subject, refwd, msgid, refs in rows
        ]
