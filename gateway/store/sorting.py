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
    "ARRIVAL": "k.arrival",
    "DATE": "k.sent",
    "SIZE": "k.size",
    "SUBJECT": "k.subject",
    "FROM": "k.from_key",
    "TO": "k.to_key",
    "CC": "k.cc_key",
    "DISPLAYFROM": "k.display_from",
    "DISPLAYTO": "k.display_to",
}
"""The SQL expression each sort key orders by (``k``: the sort_key row)."""

assert set(SORT_COLUMNS) == SORT_KEYS | DISPLAY_SORT_KEYS

SORT_JOIN = " JOIN sort_key k ON k.message_id = mm.message_id"
"""The rows searched, joined with their keys (one narrow row per message, so a SORT
reads neither the wide ``message`` rows nor their blobs unless the criteria need them)."""


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


THREAD_COLUMNS = "mm.uid, k.sent, k.subject, k.refwd, k.msgid, k.refs"
"""What :class:`~gateway.core.sorting.ThreadFacts` is made of, in its field order."""


# ---- the sort_key table (SQLite) ------------------------------------------------------

SORT_KEY_DDL = """
CREATE TABLE IF NOT EXISTS sort_key (
    message_id   INTEGER PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
    arrival      INTEGER NOT NULL,
    sent         INTEGER NOT NULL,
    size         INTEGER NOT NULL,
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
"""One row per message: INTERNALDATE, the RFC 5256 §2.2 sent date (epoch seconds, UTC,
INTERNALDATE when there is no usable Date:) and the size, copied from ``message``; the
case-mapped string keys of :class:`~gateway.message.sortkeys.SortKeys`, the "reply or
forward" bit and the THREAD msg-ids (``refs``: a JSON list)."""

INSERT_SORT_KEY = (
    "INSERT OR REPLACE INTO sort_key (message_id, arrival, sent, size, subject, refwd, from_key,"
    " to_key, cc_key, display_from, display_to, msgid, refs)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def sort_key_row(
    message_id: int, arrival: int, sent: int | None, size: int, keys: SortKeys
) -> tuple[object, ...]:
    """The parameters of :data:`INSERT_SORT_KEY` for one message (``sent`` None: no
    usable Date:, so INTERNALDATE stands in, RFC 5256 §2.2)."""
    return (
        message_id,
        arrival,
        arrival if sent is None else sent,
        size,
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
            "SELECT m.id, m.internaldate, m.sent_date, m.size, substr(c.raw, 1, ?)"
            " FROM message m JOIN content c ON c.message_id = m.id WHERE m.id > ?"
            " ORDER BY m.id LIMIT ?",
            (MAX_HEADER_READ, last, BACKFILL_BATCH),
        ).fetchall()
        if not rows:
            return
        conn.executemany(
            INSERT_SORT_KEY,
            [
                sort_key_row(mid, arrival, sent, size, keys_of_raw(bytes(raw)))
                for mid, arrival, sent, size, raw in rows
            ],
        )
        last = rows[-1][0]
