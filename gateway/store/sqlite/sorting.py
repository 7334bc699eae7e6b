"""The SQLite store's SORT and THREAD reads (RFC 5256): one query each, ordered by SQLite.

The search criteria become the WHERE clause exactly as for SEARCH
(:func:`gateway.store.search.build_query`); the sort program becomes the ORDER BY
(:func:`gateway.store.sorting.order_by`) over the keys precomputed at ingest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.search import build_query
from gateway.store.sorting import SORT_JOIN, THREAD_COLUMNS, order_by
from gateway.store.sqlite.rows import SQLiteRows


class SQLiteSorting(SQLiteRows):
    """:class:`~gateway.store.interfaces.Sorting` on SQLite."""

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        """RFC 5256 §3 SORT: matching UIDs in sort order."""
        return [
            r[0] for r in self._sorted(mailbox_id, criteria, "mm.uid", order_by(program), viewer)
        ]

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        """RFC 5256 §3 THREAD input: the matching messages' facts, ascending UID."""
        rows = self._sorted(mailbox_id, criteria, THREAD_COLUMNS, "mm.uid", viewer)
        return [
            ThreadFacts(uid, sent, subject, bool(refwd), msgid, tuple(json.loads(refs)))
            for uid, sent, subject, refwd, msgid, refs in rows
        ]

    def _sorted(
        self, mailbox_id: int, criteria: Criteria, columns: str, order: str, viewer: str | None
    ) -> list[tuple]:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            (largest,) = conn.execute(
                "SELECT max(uid) FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
            ).fetchone()
            source, source_params = self._source(conn, mailbox_id, viewer)
            query = build_query(
                mailbox_id,
                criteria,
                largest or 0,
                source=source,
                source_params=source_params,
                columns=columns,
                joins=SORT_JOIN,
                order=order,
            )
            if largest is None:
                return []
            return conn.execute(query.sql, query.params).fetchall()
