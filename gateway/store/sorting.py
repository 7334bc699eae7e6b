"""SORT answered by SQL: a SORT program (:mod:`gateway.core.sorting`) as an ORDER BY.

RFC 5256 §3: every key but ARRIVAL, DATE and SIZE is a string compared with
``i;ascii-casemap``; the ``sort_key`` table (schema version "sort keys") holds those
strings already case-mapped, so ``BINARY`` (octet) order over UTF-8 is the collation.
DATE is the sent date in UTC with INTERNALDATE as the fallback (§2.2), ARRIVAL the
INTERNALDATE. Messages equal on every key keep mailbox order (UID ascending), whatever
REVERSE says (§3: "sorted according to the order in which they appear in the mailbox").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from gateway.core.sorting import DISPLAY_SORT_KEYS, SORT_KEYS, SortCriterion
from gateway.message.sortkeys import SortKeys, sort_keys
from gateway.message.structure import parse

SORT_COLUMNS: dict[str, str] = {
    "ARRIVAL": "m.internaldate",
    "DATE": "coalesce(m.sent_date, m.internaldate)",
    "SIZE": "m.size",
    "SUBJECT": "k.subject",
    "FROM": "k.from_key",
    "TO": "k.to_key",
    "CC": "k.cc_key",
    "DISPLAYFROM": "k.display_from",
    "DISPLAYTO": "k.display_to",
}
"""The SQL expression each sort key orders by (``m``: message, ``k``: sort_key)."""

assert set(SORT_COLUMNS) == SORT_KEYS | DISPLAY_SORT_KEYS

SORT_JOIN = (
    " JOIN message m ON m.id = mm.message_id LEFT JOIN sort_key k ON k.message_id = mm.message_id"
)
"""Rows searched, joined with what the keys read."""


def order_by(program: Sequence[SortCriterion]) -> str:
    """The ORDER BY list for a SORT program; fixed SQL text only (keys are validated)."""
    terms = []
    for criterion in program:
        column = SORT_COLUMNS.get(criterion.key)
        if column is None:
            raise ValueError(f"unknown sort key {criterion.key!r}")
        terms.append(f"{column} DESC" if criterion.reverse else column)
    terms.append("mm.uid")
    return ", ".join(terms)


THREAD_COLUMNS = (
    "mm.uid, coalesce(m.sent_date, m.internaldate), coalesce(k.subject, ''),"
    " coalesce(k.refwd, 0), k.msgid, coalesce(k.refs, '[]')"
)
"""What :class:`~gateway.core.sorting.ThreadFacts` is made of, in its field order."""


# ---- the sort_key table (SQLite) ------------------------------------------------------

SORT_KEY_DDL = """
CREATE TABLE sort_key (
    message_id   INTEGER PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
    subject      TEXT NOT NULL,
    refwd        INTEGER NOT NULL,
    from_key     TEXT NOT NULL,
    to_key       TEXT NOT NULL,
    cc_key       TEXT NOT NULL,
    display_from TEXT NOT NULL,
    display_to   TEXT NOT NULL,
    msgid        TEXT,
    refs         TEXT NOT NULL
)
"""
"""One row per message: the case-mapped string keys of :class:`~gateway.message.sortkeys.
SortKeys`, the "reply or forward" bit and the THREAD msg-ids (``refs``: a JSON list)."""

INSERT_SORT_KEY = (
    "INSERT OR REPLACE INTO sort_key (message_id, subject, refwd, from_key, to_key, cc_key,"
    " display_from, display_to, msgid, refs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def sort_key_row(message_id: int, keys: SortKeys) -> tuple[object, ...]:
    """The parameters of :data:`INSERT_SORT_KEY` for one message."""
    return (
        message_id,
        keys.subject,
        int(keys.reply_or_forward),
        keys.from_,
        keys.to,
        keys.cc,
        keys.display_from,
        keys.display_to,
        keys.message_id,
        json.dumps(list(keys.references)),
    )


def keys_of_raw(raw: bytes) -> SortKeys:
    """The sort keys of stored bytes (header section only; for the migration's backfill)."""
    root = parse(bytes(raw))
    return sort_keys(root.values)


MAX_HEADER_READ = 256 * 1024
"""Bytes of a stored message the backfill reads: a header section, with room to spare."""

BACKFILL_BATCH = 500
"""Messages read at a time when the migration computes keys for existing mail."""


def migrate_sort_keys(conn: sqlite3.Connection) -> None:
    """Schema step: create ``sort_key`` and fill it for every message already stored
    (parsed from its bytes once, here, so no read path ever needs a fallback)."""
    conn.execute(SORT_KEY_DDL)
    last = 0
    while True:
        rows = conn.execute(
            "SELECT message_id, substr(raw, 1, ?) FROM content WHERE message_id > ?"
            " ORDER BY message_id LIMIT ?",
            (MAX_HEADER_READ, last, BACKFILL_BATCH),
        ).fetchall()
        if not rows:
            return
        conn.executemany(
            INSERT_SORT_KEY, [sort_key_row(mid, keys_of_raw(bytes(raw))) for mid, raw in rows]
        )
        last = rows[-1][0]
