"""The PostgreSQL store's SORT and THREAD reads (RFC 5256): one query each, ordered by the database.

As on SQLite (:mod:`gateway.store.sqlite.sorting`), the search criteria become the WHERE
clause (:func:`gateway.store.search.build_query` in the PostgreSQL dialect) and the sort
program the ORDER BY (:func:`gateway.store.sorting.order_by`) over the ``sort_key`` rows
computed at ingest. Their string keys are stored already case-mapped (i;ascii-casemap,
RFC 4790 §9.2) in ``COLLATE "C"`` columns, so the database orders them by octets, as
SQLite's BINARY collation does. No answers are kept: several nodes share the database,
and a cached answer could not tell that another node changed the mailbox.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.postgres.rows import PGRows
from gateway.store.sorting import THREAD_COLUMNS, order_by


class PGSorting(PGRows):
    """:class:`~gateway.store.interfaces.Sorting` on PostgreSQL."""

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        """RFC 5256 §3 SORT: matching UIDs in sort order."""
        order = order_by(program)
        with self._read() as cur:
            self._require(cur, mailbox_id)
            rows = self._sorted_in(cur, mailbox_id, criteria, "mm.uid", order, viewer)
        return [int(r[0]) for r in rows]

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        """RFC 5256 §3 THREAD input: the matching messages' facts, ascending UID."""
        with self._read() as cur:
            self._require(cur, mailbox_id)
            rows = self._sorted_in(cur, mailbox_id, criteria, THREAD_COLUMNS, "mm.uid", viewer)
        return [
            ThreadFacts(int(uid), sent, subject, bool(refwd), msgid, tuple(json.loads(refs)))
            for uid, sent, subject, refwd, msgid, refs in rows
        ]
