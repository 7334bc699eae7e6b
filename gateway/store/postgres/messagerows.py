"""The rows of one new message on PostgreSQL as data-modifying CTEs of a single statement.

A message is five tables' rows (``message``, ``content``, ``header_field``, ``sort_key``,
``message_text``); written one statement each they cost five round trips, and five
statements' parse/bind/execute on the server, per message. :data:`MESSAGE_CTES` writes
them all from one statement, ``FROM`` a preceding CTE of the caller's (:data:`APPEND_ONE
<gateway.store.postgres.appendwrite.APPEND_ONE>`'s mailbox update, :data:`DELIVER_ONE`'s
ledger claim, :data:`INSERT_ONE`'s single row): when that CTE yields no row, nothing at
all is written. :func:`message_params` is the one place that turns a message's values
(:func:`~gateway.store.rowdata.message_values`, the sort key row) into PostgreSQL's
parameters (text cleaned by :func:`~gateway.store.postgres.text.pg_text`), so every write
path stores the same rows.
"""

from __future__ import annotations

from typing import Any

from gateway.message.analysis import Analysis
from gateway.store.postgres.text import pg_text
from gateway.store.rowdata import message_values
from gateway.store.sorting import sort_key_row

MESSAGE_CTES = (
    " msg AS (INSERT INTO message (sha256, size, internaldate, internaldate_tz,"
    " internal_day, sent_date, sent_day, message_id_header, envelope, bodystructure, body,"
    " parts) SELECT %s::bytea, %s::bigint, %s::bigint, %s::integer, %s::integer,"
    " %s::bigint, %s::integer, %s::text, %s::bytea, %s::bytea, %s::bytea, %s::text"
    " FROM {source} RETURNING id),"
    " body AS (INSERT INTO content (message_id, raw) SELECT id, %s::bytea FROM msg),"
    " head AS (INSERT INTO header_field (message_id, name, pos, value_folded)"
    " SELECT msg.id, f.name, f.pos, f.value FROM msg,"
    " unnest(%s::text[], %s::integer[], %s::text[]) AS f(name, pos, value)),"
    " sort AS (INSERT INTO sort_key (message_id, arrival, sent, size, subject, refwd,"
    " from_key, to_key, cc_key, display_from, display_to, msgid, refs)"
    " SELECT id, %s::bigint, %s::bigint, %s::bigint, %s::text, %s::integer, %s::text,"
    " %s::text, %s::text, %s::text, %s::text, %s::text, %s::text FROM msg),"
    " words AS (INSERT INTO message_text (message_id, header_folded, text_folded)"
    " SELECT id, %s::text, %s::text FROM msg)"
)
"""The CTEs ``msg`` (yielding the new message's ``id``), ``body``, ``head``, ``sort`` and
``words``; ``{source}`` names the caller's preceding CTE. Parameters: :func:`message_params`."""

DELIVER_ONE = (
    "WITH claim AS (INSERT INTO ledger"
    " (upstream, uidl, message_id, state, reason, fetched_at, size)"
    " VALUES (%s, %s, NULL, 'delivered', NULL, %s, %s)"
    " ON CONFLICT (upstream, uidl) DO NOTHING RETURNING 1),"
    + MESSAGE_CTES.format(source="claim")
    + " SELECT id FROM msg"
)
"""One fetched message: its ledger row claimed first, as
:meth:`~gateway.store.postgres.ledger.PGLedger._claim` does (a UIDL already in the
ledger, or committed meanwhile by another node whose claim this one waited on, yields no
row), and the message's rows only if the claim succeeded. Yields the new message's id or
no row. Parameters: (upstream, uidl, fetched_at, size) then :func:`message_params`."""


INSERT_ONE = "WITH one AS (SELECT 1)," + MESSAGE_CTES.format(source="one") + " SELECT id FROM msg"
"""One message's rows alone, yielding its id, for the write paths that add the mailbox
rows in a statement of their own (MULTIAPPEND and a shared mailbox's APPEND, a delivery
with content dedup, a routed delivery). Parameters: :func:`message_params`."""


def message_params(raw: Any, analysis: Analysis, internal: tuple[int, int, int]) -> list[object]:
    """The parameters of :data:`MESSAGE_CTES`."""
    values = message_values(raw, analysis, internal)
    row = list(values.row)
    if row[7] is not None:
        row[7] = pg_text(row[7])  # message_id_header
    row[11] = pg_text(row[11])  # parts
    # A spooled APPEND arrives as an mmap: passed as a memoryview, not copied here.
    body = raw if isinstance(raw, bytes) else memoryview(raw)
    headers = values.headers
    keys = sort_key_row(0, internal[0], values.row[5], len(raw), analysis.sort)  # type: ignore[arg-type]
    return [
        *row,
        body,
        [pg_text(name) for _pos, name, _value in headers],
        [pos for pos, _name, _value in headers],
        [pg_text(value) for _pos, _name, value in headers],
        *(pg_text(v) if isinstance(v, str) else v for v in keys[1:]),
        pg_text(values.header_folded),
        pg_text(values.text_folded),
    ]
