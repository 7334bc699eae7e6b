"""The SQLite schema of the default store and the ordered migrations that build it.

The database records its version in ``PRAGMA user_version``: version *n* means the
first *n* entries of :data:`MIGRATIONS` have run. A later change appends a migration
(for example ``ALTER TABLE ... ADD COLUMN``) and never edits an earlier one, so every
existing file can be brought forward in place. Each migration runs in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash leaves the
file at a well-defined version.

Table layout and why:

* ``mailbox`` keeps the per-mailbox counters IMAP needs to be persistent: UIDVALIDITY,
  UIDNEXT (RFC 3501 §2.3.1.1) and HIGHESTMODSEQ (RFC 7162 §3.1.1). Its id is
  ``AUTOINCREMENT`` so an id held by a session is never reused for another mailbox.
* ``message`` holds what was computed once at ingest (ENVELOPE, BODYSTRUCTURE, dates,
  size); the raw bytes live in ``content`` so that metadata scans stay small. A COPY
  adds a ``mailbox_message`` row pointing at the same ``message`` (deduplication by
  reference); a message row goes when its last reference does.
* ``mailbox_message`` is a mailbox's view: (mailbox, UID) → message, flags, modseq and
  the \\Recent bit. Flags are one space-separated text column (system flags in canonical
  case), searched with ``instr``.
* ``expunged`` remembers removed UIDs with the modseq of their removal for QRESYNC
  VANISHED (RFC 7162 §3.2.10).
* ``header_field`` and ``message_text`` carry case-folded header values and body text
  for SEARCH (RFC 3501 §6.4.4) without re-parsing any message.
* ``ledger`` is the POP3 exactly-once record: a (upstream, UIDL) row is written in the
  same transaction as the message it delivered.
* ``meta`` holds store-wide counters (the UIDVALIDITY sequence).
* ``private_flag`` (version 3, households) keeps each member's own \\Seen in shared
  mailboxes (owner ``shared:NAME``): one row per (mailbox, user, UID) the user ever
  changed, with the modseq of that change, taken from the mailbox's one counter. The
  shared ``mailbox_message.flags`` of a shared mailbox never holds \\Seen.
* ``known_source`` (version 4, issue 20) remembers, per user, the sources (address or
  IPv6 /64) they logged in from and when last, so the login penalty's lockout protection
  survives a restart (:mod:`gateway.store.known_sources`; at most a few rows per user).
* ``sieve_script`` (version 5, issue 16) holds each owner's Sieve scripts, at most one
  active per owner (a partial unique index says so), so backups carry them with the mail.
  ``sieve_duplicate`` is the RFC 7352 duplicate-tracking record: (owner, handle, ID) with
  the time it expires, written in the transaction that files the message.
* ``timeseries_point`` (version 7, the web page's history, issue 18) holds the points of
  :mod:`gateway.store.sqlite_timeseries`: in the store's file, so a backup carries it.
* ``header_field`` rows named ``":from"``, ``":to"``, ``":cc"``, ``":bcc"`` (version 8,
  issue 17) hold those fields' addresses as parsed, for SEARCH FROM/TO/CC/BCC; the
  migration adds them to the messages already stored.
* ``mailbox_message.savedate`` (version 9, issue 17) is the RFC 8514 save date: the epoch
  second the row entered its mailbox.
* ``sort_key`` (version 10, SORT/THREAD, issue 17) holds per message the RFC 5256 keys
  computed at ingest (base subject, first addresses, display names, msg-ids), already
  ``i;ascii-casemap``ped, so SORT is an ORDER BY (:mod:`gateway.store.sorting`).
* ``message_text_index`` (version 11, issue 17) is the FTS5 trigram index over
  ``message_text`` that answers SEARCH BODY/TEXT without a scan
  (:mod:`gateway.store.sqlite_textindex`); from version 14 a new message waits in its
  backlog (scanned by searches) until a batch of them is indexed together.
* partial indexes of ``mailbox_message`` (version 13, issue 19) over the unseen, flagged,
  deleted, \\Recent and flagged-at-all rows answer SEARCH UNSEEN/FLAGGED, EXPUNGE and
  SELECT's summary (first unseen, \\Recent, keywords in use) without a scan of the mailbox (:mod:`gateway.store.sqlite_flagindex`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from gateway.message.analysis import header_addresses
from gateway.message.fields import MAX_ANALYZED_HEADER
from gateway.store.interfaces import StoreError
from gateway.store.search import address_row_name
from gateway.store.sorting import migrate_sort_keys
from gateway.store.sqlite_flagindex import FLAG_INDEX_DDL
from gateway.store.sqlite_queue import QUEUE_DDL
from gateway.store.sqlite_textindex import (
    migrate_automerge,
    migrate_deferred_index,
    migrate_text_index,
)
from gateway.store.sqlite_timeseries import TIMESERIES_DDL

Migration = Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Migration:
    """A migration made of plain SQL statements, run one by one on the open transaction.

    ``executescript`` is avoided on purpose: it commits any open transaction first,
    which would split the migration from its version bump.
    """

    def run(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return run


_V1 = _statements(
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE mailbox (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        owner         TEXT NOT NULL,
        name          TEXT NOT NULL,
        uidvalidity   INTEGER NOT NULL,
        uidnext       INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        special_use   TEXT,
        UNIQUE (owner, name)
    )
    """,
    """
    CREATE TABLE subscription (
        owner TEXT NOT NULL,
        name  TEXT NOT NULL,
        PRIMARY KEY (owner, name)
    ) WITHOUT ROWID
    """,
    # internaldate: epoch seconds; internaldate_tz: offset in minutes east of UTC.
    # internal_day / sent_day: date.toordinal() of the calendar day as written in the
    # date's own offset (RFC 3501 §6.4.4 compares days "disregarding time and timezone").
    # sent_day falls back to internal_day when there is no usable Date: (RFC 5256 §2.2).
    """
    CREATE TABLE message (
        id                INTEGER PRIMARY KEY,
        sha256            BLOB NOT NULL,
        size              INTEGER NOT NULL,
        internaldate      INTEGER NOT NULL,
        internaldate_tz   INTEGER NOT NULL,
        internal_day      INTEGER NOT NULL,
        sent_date         INTEGER,
        sent_day          INTEGER NOT NULL,
        message_id_header TEXT,
        envelope          BLOB NOT NULL,
        bodystructure     BLOB NOT NULL,
        body              BLOB NOT NULL,
        parts             TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE content (
        message_id INTEGER PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
        raw        BLOB NOT NULL
    )
    """,
    """
    CREATE TABLE mailbox_message (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        uid        INTEGER NOT NULL,
        message_id INTEGER NOT NULL REFERENCES message (id),
        flags      TEXT NOT NULL DEFAULT '',
        modseq     INTEGER NOT NULL,
        recent     INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX mailbox_message_modseq ON mailbox_message (mailbox_id, modseq)",
    "CREATE INDEX mailbox_message_message ON mailbox_message (message_id)",
    """
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        uid        INTEGER NOT NULL,
        modseq     INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq)",
    """
    CREATE TABLE header_field (
        message_id   INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
        name         TEXT NOT NULL,
        pos          INTEGER NOT NULL,
        value_folded TEXT NOT NULL,
        PRIMARY KEY (message_id, name, pos)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE message_text (
        message_id    INTEGER PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
        header_folded TEXT NOT NULL,
        text_folded   TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE ledger (
        upstream   TEXT NOT NULL,
        uidl       TEXT NOT NULL,
        message_id INTEGER REFERENCES message (id) ON DELETE SET NULL,
        state      TEXT NOT NULL CHECK (state IN ('delivered', 'skipped')),
        reason     TEXT,
        fetched_at REAL NOT NULL,
        size       INTEGER,
        PRIMARY KEY (upstream, uidl)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX ledger_message ON ledger (message_id)",
)

# Version 2 (POP3 fetcher): the ledger learns the state 'imported' (UIDLs taken over from
# fetchmail/getmail state files, never fetched), which a CHECK constraint can only gain by
# rebuilding the table; and message.sha256 gets an index for content dedup across upstreams.
_V2 = _statements(
    """
    CREATE TABLE ledger_v2 (
        upstream   TEXT NOT NULL,
        uidl       TEXT NOT NULL,
        message_id INTEGER REFERENCES message (id) ON DELETE SET NULL,
        state      TEXT NOT NULL CHECK (state IN ('delivered', 'skipped', 'imported')),
        reason     TEXT,
        fetched_at REAL NOT NULL,
        size       INTEGER,
        PRIMARY KEY (upstream, uidl)
    ) WITHOUT ROWID
    """,
    "INSERT INTO ledger_v2 SELECT upstream, uidl, message_id, state, reason, fetched_at, size"
    " FROM ledger",
    "DROP TABLE ledger",
    "ALTER TABLE ledger_v2 RENAME TO ledger",
    "CREATE INDEX ledger_message ON ledger (message_id)",
    "CREATE INDEX message_sha256 ON message (sha256)",
)

# Version 3 (households): per-member \Seen in shared mailboxes. Rows go with their
# mailbox (cascade) and with their message row (the store deletes them on expunge/move).
_V3 = _statements(
    """
    CREATE TABLE private_flag (
        mailbox_id INTEGER NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        user       TEXT NOT NULL,
        uid        INTEGER NOT NULL,
        seen       INTEGER NOT NULL,
        modseq     INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, user, uid)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX private_flag_modseq ON private_flag (mailbox_id, user, modseq)",
)

# Version 4 (login penalty, issue 20): where each user logged in from, kept across
# restarts. Not tied to any mailbox: a deleted user's few rows age out by time.
_V4 = _statements(
    """
    CREATE TABLE known_source (
        user   TEXT NOT NULL,
        source TEXT NOT NULL,
        seen   REAL NOT NULL,
        PRIMARY KEY (user, source)
    ) WITHOUT ROWID
    """,
)

# Version 5 (Sieve, issue 16): scripts per owner and RFC 7352 duplicate tracking. Self-contained
# (two new tables, touching no other), so it can be renumbered when merged next to another.
_V5_SIEVE = _statements(
    """
    CREATE TABLE sieve_script (
        owner  TEXT NOT NULL,
        name   TEXT NOT NULL,
        text   TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
        PRIMARY KEY (owner, name)
    ) WITHOUT ROWID
    """,
    "CREATE UNIQUE INDEX sieve_script_active ON sieve_script (owner) WHERE active = 1",
    """
    CREATE TABLE sieve_duplicate (
        owner   TEXT NOT NULL,
        handle  TEXT NOT NULL,
        id      TEXT NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (owner, handle, id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX sieve_duplicate_expires ON sieve_duplicate (owner, expires)",
)

# Version 6 (submission relay, issue 15): the outbound queue (``outbound_queue`` and
# ``outbound_routes``, gateway/store/sqlite_queue.py) moves into the store file, so a
# backup carries the mail still waiting to be relayed. Its DDL is the queue module's own
# (idempotent: a file whose queue tables exist already keeps them).
_V6_QUEUE = _statements(*(s for s in QUEUE_DDL.split(";") if s.strip()))

# Version 7 (web page history, issue 18): the table SQLiteTimeSeries used to create by itself on
# the store's connection. Its DDL says IF NOT EXISTS, so a file where that already
# happened upgrades in place, points kept.
TIMESERIES = _statements(TIMESERIES_DDL)


def _address_rows(conn: sqlite3.Connection) -> None:
    """Issue 17: SEARCH FROM/TO/CC/BCC match parsed addresses, kept as ``header_field``
    rows named ``":from"`` etc. (:data:`gateway.store.search.ADDRESS_ROW_PREFIX`); add them
    for the messages stored before, reading only each message's header section."""
    cursor = conn.execute(
        "SELECT message_id, substr(raw, 1, ?) FROM content ORDER BY message_id",
        (MAX_ANALYZED_HEADER + 2,),
    )
    while batch := cursor.fetchmany(500):
        conn.executemany(
            "INSERT OR IGNORE INTO header_field (message_id, name, pos, value_folded)"
            " VALUES (?, ?, ?, ?)",
            [
                (message_id, address_row_name(name), pos, value.casefold())
                for message_id, head in batch
                for pos, (name, value) in enumerate(header_addresses(bytes(head)))
            ],
        )


# SAVEDATE (RFC 8514, issue 17): the epoch second each row entered its mailbox (APPEND,
# delivery, COPY, MOVE). Rows older than this version never recorded it; their
# INTERNALDATE is the best knowledge there is (for POP3-delivered mail it is the arrival),
# so they are filled from it and the column is never NULL.
def SAVEDATE(conn: sqlite3.Connection) -> None:
    """Add and fill ``mailbox_message.savedate``; a file that has the column already (a
    version number rolled back by hand) keeps its values."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(mailbox_message)")}
    if "savedate" in columns:
        return
    conn.execute("ALTER TABLE mailbox_message ADD COLUMN savedate INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE mailbox_message SET savedate ="
        " (SELECT m.internaldate FROM message m WHERE m.id = mailbox_message.message_id)"
    )


# Version 10 (SORT and THREAD, issue 17): the ``sort_key`` table of gateway/store/sorting.py,
# filled for the mail already stored. Self-contained (one new table), renumberable.
_V10_SORT_KEYS: Migration = migrate_sort_keys


# Version 11 (full-text SEARCH, issue 17): the FTS5 trigram index over ``message_text`` and
# the triggers that keep it in step; messages already stored become a backlog indexed in
# batches after the migration (gateway/store/sqlite_textindex.py). Self-contained: one
# virtual table, one side table and two triggers, touching no other table.
TEXT_INDEX = migrate_text_index

MESSAGE_SIZE_INDEX = "message_size"
"""A covering index of ``message (id, size)``: mailbox counts (STATUS, the web page's
store sizes) sum RFC822.SIZE through it instead of reading each wide ``message`` row."""

# Version 12 (performance round two, issue 19): summing a mailbox's sizes used to read one
# ``message`` row per message (envelope, bodystructure and MIME parts inline: about a page
# each), so one STATUS or history sample of a 100,000-message mailbox pulled ~230 MiB of the
# file into the process's mmap'd RSS. The index holds ~300 (id, size) pairs per page.
# Self-contained (one index), renumberable.
_V12_SIZE_INDEX = _statements(
    f"CREATE INDEX IF NOT EXISTS {MESSAGE_SIZE_INDEX} ON message (id, size)",
)

# Version 13 (issue 19, mailbox size and the mix): SEARCH UNSEEN/FLAGGED, EXPUNGE's
# \Deleted rows and SELECT's \Recent set, first unseen message and keywords read every row of the
# mailbox, so their cost grew with it; five partial indexes hold just the rows each test
# selects. Self-contained (five indexes on one table), renumberable.
_V13_FLAG_INDEXES = _statements(*FLAG_INDEX_DDL)

# Version 14 (performance round two, issue 19): a new message's text is indexed in a
# batch of INDEX_BATCH, not by its own FTS5 insert (~0.35 ms of each APPEND's CPU on the
# reactor); meanwhile it is listed in the backlog that searches scan. Self-contained: the
# insert trigger is replaced, nothing else (gateway/store/sqlite_textindex.py).
DEFERRED_INDEX = migrate_deferred_index

# Version 15 (issue 19, session 7): the full-text index merges its segments 8 at a time
# instead of FTS5's default 4, about half of the FTS5 work of each APPEND on the reactor
# (gateway/store/sqlite_textindex.py AUTOMERGE). Self-contained: one FTS5 setting.
FTS_AUTOMERGE = migrate_automerge

MIGRATIONS: Sequence[Migration] = (
    _V1,
    _V2,
    _V3,
    _V4,
    _V5_SIEVE,
    _V6_QUEUE,
    TIMESERIES,
    _address_rows,
    SAVEDATE,
    _V10_SORT_KEYS,
    TEXT_INDEX,
    _V12_SIZE_INDEX,
    _V13_FLAG_INDEXES,
    DEFERRED_INDEX,
    FTS_AUTOMERGE,
)
"""Entry *i* takes a database from version *i* to *i + 1*. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(StoreError):
    """The file was written by a newer popgate; opening it could corrupt it."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the file (0 for a new, empty database)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to ``len(migrations)``; returns how many migrations ran.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step is its
    own ``BEGIN IMMEDIATE`` transaction, re-reading the version inside it so that two
    processes opening the same new file cannot both run a step.
    """
    target = len(migrations)
    ran = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)
            if current > target:
                raise SchemaTooNew(
                    f"database schema version {current} is newer than this program ({target})"
                )
            if current == target:
                conn.execute("COMMIT")
                return ran
            migrations[current](conn)
            # PRAGMA arguments cannot be bound parameters; ``current + 1`` is an int.
            conn.execute(f"PRAGMA user_version = {int(current) + 1}")
            conn.execute("COMMIT")
            ran += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
