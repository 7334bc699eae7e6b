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
flag change does not). Then the order is brought up to date rather than recomputed
when the change is small: expunged UIDs (the ``expunged`` table, since the kept
HIGHESTMODSEQ) are dropped, new ones (UID at or above the kept UIDNEXT) are placed by
binary search, and the result is used only if its length is the mailbox's new count.
A SORT with criteria other than ALL filters the kept order by the criteria's matches,
read in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from gateway.core import criteria as c
from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.errors import MailboxNotFound
from gateway.store.sorting import SORT_COLUMNS, SORT_JOIN, THREAD_COLUMNS, order_by
from gateway.store.sqlite.rows import SQLiteRows

SORT_CACHE_ENTRIES = 8
"""Mailbox orders kept per store (each an ``array('I')`` of UIDs: 40 KB per 10,000
messages)."""

MAX_PLACED = 64
"""Most new messages placed one by one into a kept order (each costs a binary search of
SQL lookups); more than that and the order is computed afresh."""

_Membership = tuple[int, int, int]
"""(UIDVALIDITY, UIDNEXT, message count): equal values mean the same set of UIDs."""

_CacheKey = tuple[int, str]
"""(mailbox id, ORDER BY text)."""


class SQLiteSorting(SQLiteRows):
    """:class:`~gateway.store.interfaces.Sorting` on SQLite."""

    _sort_cache: OrderedDict[_CacheKey, tuple[_Membership, int, array]] | None = None

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
                "SELECT uidvalidity, uidnext, highestmodseq FROM mailbox WHERE id = ?",
                (mailbox_id,),
            ).fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            validity, uidnext, modseq = (int(v) for v in row)
            kept = cache.pop(key, None)
            if kept is not None and kept[1] == modseq and kept[0][:2] == (validity, uidnext):
                # Nothing at all changed (every expunge moves HIGHESTMODSEQ): no count.
                membership = kept[0]
            else:
                (count,) = conn.execute(
                    "SELECT count(*) FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
                ).fetchone()
                membership = (validity, uidnext, int(count))
            if kept is not None and kept[0] == membership:
                ordered = kept[2]
            else:
                ordered = None
                if kept is not None:
                    ordered = self._updated(conn, mailbox_id, program, kept, membership)
                if ordered is None:
                    # Keys and membership do not depend on the viewer (only flags do).
                    rows = self._sorted_in(conn, mailbox_id, c.All(), "mm.uid", order, None)
                    ordered = array("I", [r[0] for r in rows])
            cache[key] = (membership, modseq, ordered)
            while len(cache) > SORT_CACHE_ENTRIES:
                cache.popitem(last=False)
            if isinstance(criteria, c.All):
                return ordered.tolist()
            matched = {
                r[0]
                for r in self._sorted_in(conn, mailbox_id, criteria, "mm.uid", "mm.uid", viewer)
            }
        return [uid for uid in ordered if uid in matched]

    def _updated(
        self,
        conn: sqlite3.Connection,
        mailbox_id: int,
        program: Sequence[SortCriterion],
        kept: tuple[_Membership, int, array],
        membership: _Membership,
    ) -> array | None:
        """The kept order brought up to ``membership``: expunged UIDs dropped, new ones
        placed; None when that is not possible or not worth it (recompute instead)."""
        (validity, uidnext, _count), modseq, old = kept
        if membership[0] != validity or membership[1] < uidnext:
            return None
        columns = "mm.uid, " + ", ".join(SORT_COLUMNS[p.key] for p in program)
        select = f"SELECT {columns} FROM mailbox_message mm{SORT_JOIN} WHERE mm.mailbox_id = ?"
        new = conn.execute(
            select + " AND mm.uid >= ? ORDER BY mm.uid LIMIT ?",
            (mailbox_id, uidnext, MAX_PLACED + 1),
        ).fetchall()
        if len(new) > MAX_PLACED:
            return None
        gone = {
            r[0]
            for r in conn.execute(
                "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? AND uid < ?",
                (mailbox_id, modseq, uidnext),
            )
        }
        ordered = array("I", [u for u in old if u not in gone]) if gone else array("I", old)
        if len(ordered) + len(new) != membership[2]:
            return None  # a change the expunged table does not explain: recompute
        reverse = [p.reverse for p in program]
        probe = select + " AND mm.uid = ?"
        for fresh in new:
            low, high = 0, len(ordered)
            while low < high:
                mid = (low + high) // 2
                there = conn.execute(probe, (mailbox_id, ordered[mid])).fetchone()
                if _before(fresh, there, reverse):
                    high = mid
                else:
                    low = mid + 1
            ordered.insert(low, fresh[0])
        return ordered

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


def _before(a: tuple, b: tuple, reverse: list[bool]) -> bool:
    """Whether row ``a`` (uid, key...) sorts before row ``b``: as the ORDER BY of
    :func:`~gateway.store.sorting.order_by` (Python compares str by code point, which is
    SQLite's BINARY order over UTF-8), UID ascending last."""
    for x, y, desc in zip(a[1:], b[1:], reverse, strict=True):
        if x != y:
            return (x > y) if desc else (x < y)
    return a[0] < b[0]
