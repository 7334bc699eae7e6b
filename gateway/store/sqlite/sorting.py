"""The SQLite store's SORT and THREAD reads (RFC 5256): one query each, ordered by SQLite.

The search criteria become the WHERE clause exactly as for SEARCH
(:func:`gateway.store.search.build_query`); the sort program becomes the ORDER BY
(:func:`gateway.store.sorting.order_by`) over the narrow ``sort_key`` rows computed at
ingest. A webmail client asks the same SORT on every list refresh, so the last
:data:`SORT_CACHE_ENTRIES` answers are kept with the mailbox's (UIDNEXT, HIGHESTMODSEQ):
every change that could alter an answer moves one of them (delivery, expunge, any flag
change, a member's private \\Seen; \\Recent keys reach the store as UID sets), so a kept
answer is served only while it is still exact, as Dovecot serves SORT from its index.
"""

from __future__ import annotations

import json
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.errors import MailboxNotFound
from gateway.store.sorting import THREAD_COLUMNS, order_by
from gateway.store.sqlite.rows import SQLiteRows

SORT_CACHE_ENTRIES = 8
"""SORT answers kept per store (each an ``array('I')`` of UIDs: 40 KB per 10,000 messages)."""

_CacheKey = tuple[int, str | None, Criteria, str]


class SQLiteSorting(SQLiteRows):
    """:class:`~gateway.store.interfaces.Sorting` on SQLite."""

    _sort_cache: OrderedDict[_CacheKey, tuple[tuple[int, int], array]] | None = None

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        """RFC 5256 §3 SORT: matching UIDs in sort order (a kept answer while exact)."""
        order = order_by(program)
        if self._sort_cache is None:
            self._sort_cache = OrderedDict()
        cache = self._sort_cache
        key: _CacheKey | None = (mailbox_id, viewer, criteria, order)
        with self._read() as conn:
            row = conn.execute(
                "SELECT uidnext, highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            state = (int(row[0]), int(row[1]))
            try:
                kept = cache.get(key)  # type: ignore[arg-type]
            except TypeError:  # criteria that cannot be a key are never kept
                kept, key = None, None
            if kept is not None and kept[0] == state:
                cache.move_to_end(key)  # type: ignore[arg-type]
                return kept[1].tolist()
            rows = self._sorted_in(conn, mailbox_id, criteria, "mm.uid", order, viewer)
        uids = [r[0] for r in rows]
        if key is not None:
            cache[key] = (state, array("I", uids))
            while len(cache) > SORT_CACHE_ENTRIES:
                cache.popitem(last=False)
        return uids

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
