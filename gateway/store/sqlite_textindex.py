"""The full-text index behind SEARCH BODY/TEXT in the SQLite store: an FTS5 trigram table.

RFC 3501 §6.4.4 defines BODY and TEXT as case-insensitive *substring* matches. The store
answers them over ``message_text`` (header text and body text, both already case-folded
at ingest with :meth:`str.casefold`); without an index that is an ``instr`` over every
message of the mailbox, linear in its size. FTS5's ``trigram`` tokenizer indexes every
three-character window of a text, and a phrase query made of a needle's consecutive
trigrams matches exactly the texts that contain the needle as a substring, so the
index keeps the scan's results to the character:

* The tokenizer runs with ``case_sensitive 1``: the columns are folded by Python already,
  and the needle is folded the same way, so SQLite's own (ASCII/Unicode 6) folding must
  not add or drop matches.
* A needle under three characters has no trigram and matches nothing in FTS5, and a
  needle holding NUL cannot be written in an FTS5 query: both are scanned as before
  (:func:`indexable`).
* FTS5's tokenizer stops at a NUL, so a text holding one is not put in the index: its
  message id goes to ``message_text_unindexed``, and every indexed search also scans the
  (normally empty) set of messages listed there.

The table is external-content (``content='message_text'``): the text is stored once,
and triggers on ``message_text`` keep the index in step with every insert and delete,
including the deletes that cascade from ``message`` when the last reference to a message
goes (expunge, move, mailbox deletion). ``message_text`` rows are never updated.

A new message is indexed in a batch, not by its own insert (:data:`~gateway.store.schema.DEFERRED_INDEX`, issue
19): the insert trigger lists it in the backlog, in the same transaction as the message,
and the store indexes the backlog once :data:`INDEX_BATCH` messages wait, inside the
write that adds the last of them (:func:`index_backlog`). FTS5 writes a segment and may
merge segments at the end of each statement that changes it, so one insert per message
cost ~0.46 ms of CPU here against ~0.12 ms per message for 32 in one statement (on the
reactor thread of the IMAP server in SQLite mode, where every APPEND's store work runs).
Searches stay exact meanwhile: a listed message is scanned, as during an upgrade's
backfill, so a search right after an APPEND finds it.

Upgrading a store that already holds messages (:data:`TEXT_INDEX` in the schema, one
migration) does not index them inside the migration: it lists them all in
``message_text_unindexed`` as backlog, and :func:`index_backlog_step` moves them into the
index :data:`BACKFILL_BATCH` messages per write transaction. Searches are exact at every
point of the way (a listed message is scanned), they only get faster as the backlog goes.
The SQLite store works the backlog off when it opens, before serving
(:meth:`~gateway.store.sqlite.connection.SQLiteConnection.index_text_step`, one batch a
call, is what a later change could run between reactor turns instead).
"""

from __future__ import annotations

import json
import sqlite3

TABLE = "message_text_index"
"""The FTS5 table; its rowid is ``message_text.message_id``."""

MIN_NEEDLE = 3
"""Shortest needle (in characters, after folding) the trigram index can answer."""

BACKFILL_BATCH = 100
"""Messages indexed per write transaction while upgrading an existing store: about
80 ms each here (0.8 ms per small message), so other writers wait for one batch at most."""

INDEX_BATCH = 32
"""Messages a store lets wait in the backlog before it indexes them together: a
multiple of this many APPENDs pays one FTS5 statement (and segment) instead of one each
(~4 ms of CPU once per batch, against ~15 ms unbatched); searches scan at most this many
messages more. The memory a batch takes is FTS5's pending-terms hash for 32 messages."""

AUTOMERGE = 8
"""FTS5's ``automerge`` for the index (its default is 4): how many segments of one level
wait before FTS5 merges them into one of the next level. Every batch writes a level-0
segment, and a text is copied again at every level it is merged up to, so the merge
work per message grows with the number of levels, log base ``automerge`` of the
segments written; the merges run inside the write that indexes a batch, on the reactor
thread in SQLite mode. Instructions per APPEND spent in FTS5's segment writes and merges
(callgrind, 3,200 APPENDs of the 50-client mix's messages onto the bench's 2,000): ~650 K
at 4, ~300 K at 8, ~235 K at 16 (issue 19, session 7). A search looks each trigram up in
every segment, up to ``automerge`` per level: 8 keeps that within ~1.5x of 4's for any
store size (a 100,000-message store: ~4 levels of up to 8 against ~6 of up to 4)."""

UNINDEXED = "message_text_unindexed"
"""Messages the index does not hold: ``backlog`` 1 = stored before the index existed (to
be indexed), 0 = text holding NUL (scanned for good)."""


def _has_nul(row: str) -> str:
    """SQL: does the ``message_text`` row ``row`` hold a NUL (bytewise, as ``length()``
    and ``replace()`` stop at the first NUL of a text)?"""
    return (
        f"(instr(CAST({row}.header_folded AS BLOB), x'00') > 0"
        f" OR instr(CAST({row}.text_folded AS BLOB), x'00') > 0)"
    )


DDL: tuple[str, ...] = (
    f"""
    CREATE VIRTUAL TABLE {TABLE} USING fts5 (
        header_folded, text_folded,
        content = 'message_text', content_rowid = 'message_id',
        tokenize = 'trigram case_sensitive 1'
    )
    """,
    f"""
    CREATE TABLE {UNINDEXED} (
        message_id INTEGER PRIMARY KEY,
        backlog    INTEGER NOT NULL CHECK (backlog IN (0, 1))
    )
    """,
    f"""
    CREATE TRIGGER message_text_index_insert AFTER INSERT ON message_text
    BEGIN
        INSERT INTO {TABLE} (rowid, header_folded, text_folded)
        SELECT new.message_id, new.header_folded, new.text_folded WHERE NOT {_has_nul("new")};
        INSERT INTO {UNINDEXED} (message_id, backlog)
        SELECT new.message_id, 0 WHERE {_has_nul("new")};
    END
    """,
    f"""
    CREATE TRIGGER message_text_index_delete AFTER DELETE ON message_text
    BEGIN
        INSERT INTO {TABLE} ({TABLE}, rowid, header_folded, text_folded)
        SELECT 'delete', old.message_id, old.header_folded, old.text_folded
        WHERE NOT EXISTS (SELECT 1 FROM {UNINDEXED} u WHERE u.message_id = old.message_id);
        DELETE FROM {UNINDEXED} WHERE message_id = old.message_id;
    END
    """,
)


DEFERRED_INSERT_TRIGGER = f"""
    CREATE TRIGGER message_text_index_insert AFTER INSERT ON message_text
    BEGIN
        INSERT INTO {UNINDEXED} (message_id, backlog) VALUES (new.message_id, 1);
    END
    """
"""The insert trigger from :data:`~gateway.store.schema.DEFERRED_INDEX` on: every new text joins the backlog
(:func:`index_backlog` indexes it, or marks it scanned for good if it holds a NUL)."""


def migrate_deferred_index(conn: sqlite3.Connection) -> None:
    """The schema migration to batched indexing: the insert trigger lists each new text
    in the backlog instead of indexing it (module docstring). Texts indexed already stay
    so; the delete trigger already handles both kinds (it skips the FTS5 delete of a
    listed message). Idempotent."""
    conn.execute("DROP TRIGGER IF EXISTS message_text_index_insert")
    conn.execute(DEFERRED_INSERT_TRIGGER)


def migrate_text_index(conn: sqlite3.Connection) -> None:
    """The schema migration: create the index, its side table and triggers, and list the
    messages already stored as backlog (indexed later, in batches, by
    :func:`index_backlog_step`). Runs inside the migration's transaction.

    A file that already has the index (a version number set back by hand) gets it built
    afresh, every message in the backlog: re-running the step never indexes twice."""
    for trigger in ("insert", "delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS message_text_index_{trigger}")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"DROP TABLE IF EXISTS {UNINDEXED}")
    for statement in DDL:
        conn.execute(statement)
    conn.execute(
        f"INSERT INTO {UNINDEXED} (message_id, backlog) SELECT message_id, 1 FROM message_text"
    )


def migrate_automerge(conn: sqlite3.Connection) -> None:
    """The schema migration that sets the index's :data:`AUTOMERGE` (FTS5 keeps it in the
    index's own config table, so it holds for every connection). Idempotent; segments
    written before keep their levels and are merged under the new setting."""
    conn.execute(f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES ('automerge', ?)", (AUTOMERGE,))


def backlog_done(conn: sqlite3.Connection) -> bool:
    """True when no message stored before the index existed waits to be indexed."""
    return conn.execute(f"SELECT 1 FROM {UNINDEXED} WHERE backlog = 1 LIMIT 1").fetchone() is None


def index_backlog_step(conn: sqlite3.Connection, batch: int = BACKFILL_BATCH) -> bool:
    """Index up to ``batch`` messages of the backlog; True when none is left. Must run
    inside a write transaction: the rows indexed and the backlog entries removed commit
    together, so a crash repeats no work and skips none."""
    index_backlog(conn, batch)
    return backlog_done(conn)


def index_backlog(conn: sqlite3.Connection, batch: int) -> None:
    """Index the ``batch`` oldest messages of the backlog in one FTS5 statement (texts
    holding NUL stay listed, as scanned for good). Inside a write transaction, as
    :func:`index_backlog_step`."""
    ids = json.dumps(
        [
            r[0]
            for r in conn.execute(
                f"SELECT message_id FROM {UNINDEXED} WHERE backlog = 1"
                " ORDER BY message_id LIMIT ?",
                (batch,),
            )
        ]
    )
    chosen = "SELECT value FROM json_each(?)"
    conn.execute(
        f"INSERT INTO {TABLE} (rowid, header_folded, text_folded)"
        " SELECT t.message_id, t.header_folded, t.text_folded FROM message_text t"
        f" WHERE t.message_id IN ({chosen}) AND NOT {_has_nul('t')}",
        (ids,),
    )
    conn.execute(
        f"UPDATE {UNINDEXED} SET backlog = 0 WHERE message_id IN"
        f" (SELECT t.message_id FROM message_text t WHERE t.message_id IN ({chosen})"
        f" AND {_has_nul('t')})",
        (ids,),
    )
    conn.execute(f"DELETE FROM {UNINDEXED} WHERE backlog = 1 AND message_id IN ({chosen})", (ids,))


def indexable(needle: str) -> bool:
    """Whether the trigram index can answer a search for ``needle`` (already folded)."""
    return len(needle) >= MIN_NEEDLE and "\x00" not in needle


def match_expression(needle: str, *, body_only: bool) -> str:
    """The FTS5 query for ``needle`` as one phrase (a bound parameter, never SQL text):
    the body column alone for BODY, either column for TEXT (RFC 3501 §6.4.4)."""
    phrase = '"' + needle.replace('"', '""') + '"'
    return f"{{text_folded}} : {phrase}" if body_only else phrase
