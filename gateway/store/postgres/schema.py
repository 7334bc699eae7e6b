"""The PostgreSQL store's schema and its versioned migrations, safe when several nodes start at once.

The tables are those of the SQLite store (:mod:`gateway.store.schema` explains each one
and why), in PostgreSQL types: 64-bit integers for ids, UIDs, UIDVALIDITY and modseqs
(they are unsigned 32-bit in IMAP), ``bytea`` for the raw message and the precomputed
wire forms, identity columns so an id is never reused. ``private_flag.viewer`` is the
SQLite ``user`` column (a reserved word here).

Versions: the ``schema_version`` table holds one row; version *n* means the first *n*
entries of :data:`MIGRATIONS` have run. A later change appends a migration and never
edits an earlier one. The first node that starts migrates: each step runs in its own
transaction under ``pg_advisory_xact_lock(`` :data:`MIGRATION_LOCK` ``)`` and re-reads the
version inside it, so nodes starting together wait for each other and none runs a step
twice; a node that finds a version newer than it knows refuses to start
(:class:`SchemaTooNew`), so an old node cannot corrupt a store a newer one migrated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.store.errors import StoreError
from gateway.store.postgres.flagfunction import STORE_FLAGS_FUNCTION
from gateway.store.postgres.text import pg_text
from gateway.store.sorting import BACKFILL_BATCH, MAX_HEADER_READ, keys_of_raw, sort_key_row

Migration = Callable[[Any], None]
"""A step: given a psycopg cursor inside the migration's transaction."""

MIGRATION_LOCK = 0x706F_7067_6174_6531
"""The advisory lock key (one bigint, "popgate1") held while a migration step runs."""


def _statements(*sql: str) -> Migration:
    def run(cur: Any) -> None:
        for statement in sql:
            cur.execute(statement)

    return run


_V1 = _statements(
    """
    CREATE TABLE meta (
        key   text PRIMARY KEY,
        value bigint NOT NULL
    )
    """,
    """
    CREATE TABLE mailbox (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner         text NOT NULL,
        name          text NOT NULL,
        uidvalidity   bigint NOT NULL,
        uidnext       bigint NOT NULL DEFAULT 1,
        highestmodseq bigint NOT NULL DEFAULT 1,
        special_use   text,
        UNIQUE (owner, name)
    )
    """,
    """
    CREATE TABLE subscription (
        owner text NOT NULL,
        name  text NOT NULL,
        PRIMARY KEY (owner, name)
    )
    """,
    """
    CREATE TABLE message (
        id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sha256            bytea NOT NULL,
        size              bigint NOT NULL,
        internaldate      bigint NOT NULL,
        internaldate_tz   integer NOT NULL,
        internal_day      integer NOT NULL,
        sent_date         bigint,
        sent_day          integer NOT NULL,
        message_id_header text,
        envelope          bytea NOT NULL,
        bodystructure     bytea NOT NULL,
        body              bytea NOT NULL,
        parts             text NOT NULL
    )
    """,
    "CREATE INDEX message_sha256 ON message (sha256)",
    """
    CREATE TABLE content (
        message_id bigint PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
        raw        bytea NOT NULL
    )
    """,
    # Message bodies are mostly already compressed (base64 attachments): skip pglz.
    "ALTER TABLE content ALTER COLUMN raw SET STORAGE EXTERNAL",
    """
    CREATE TABLE mailbox_message (
        mailbox_id bigint NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        uid        bigint NOT NULL,
        message_id bigint NOT NULL REFERENCES message (id),
        flags      text NOT NULL DEFAULT '',
        modseq     bigint NOT NULL,
        recent     smallint NOT NULL DEFAULT 1,
        PRIMARY KEY (mailbox_id, uid)
    )
    """,
    "CREATE INDEX mailbox_message_modseq ON mailbox_message (mailbox_id, modseq)",
    "CREATE INDEX mailbox_message_message ON mailbox_message (message_id)",
    """
    CREATE TABLE expunged (
        mailbox_id bigint NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        uid        bigint NOT NULL,
        modseq     bigint NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    )
    """,
    "CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq)",
    """
    CREATE TABLE header_field (
        message_id   bigint NOT NULL REFERENCES message (id) ON DELETE CASCADE,
        name         text NOT NULL,
        pos          integer NOT NULL,
        value_folded text NOT NULL,
        PRIMARY KEY (message_id, name, pos)
    )
    """,
    """
    CREATE TABLE message_text (
        message_id    bigint PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
        header_folded text NOT NULL,
        text_folded   text NOT NULL
    )
    """,
    """
    CREATE TABLE ledger (
        upstream   text NOT NULL,
        uidl       text NOT NULL,
        message_id bigint REFERENCES message (id) ON DELETE SET NULL,
        state      text NOT NULL CHECK (state IN ('delivered', 'skipped', 'imported')),
        reason     text,
        fetched_at double precision NOT NULL,
        size       bigint,
        PRIMARY KEY (upstream, uidl)
    )
    """,
    "CREATE INDEX ledger_message ON ledger (message_id)",
    """
    CREATE TABLE private_flag (
        mailbox_id bigint NOT NULL REFERENCES mailbox (id) ON DELETE CASCADE,
        viewer     text NOT NULL,
        uid        bigint NOT NULL,
        seen       smallint NOT NULL,
        modseq     bigint NOT NULL,
        PRIMARY KEY (mailbox_id, viewer, uid)
    )
    """,
    "CREATE INDEX private_flag_modseq ON private_flag (mailbox_id, viewer, modseq)",
)

# Version 2: the tables of the contracts that grew beside the mail (the SQLite schema's
# versions 4 and 5, and the time series), so a node keeps nothing a client can see on its
# own disk: known login sources (gateway/store/known_sources.py), Sieve scripts (at most
# one active per owner, by a partial unique index) with RFC 7352 duplicate tracking
# (gateway/store/scripts.py, issue 16), and time series (gateway/store/timeseries.py).
_V2 = _statements(
    """
    CREATE TABLE known_source (
        "user" text NOT NULL,
        source text NOT NULL,
        seen   double precision NOT NULL,
        PRIMARY KEY ("user", source)
    )
    """,
    """
    CREATE TABLE sieve_script (
        owner  text NOT NULL,
        name   text NOT NULL,
        text   text NOT NULL,
        active boolean NOT NULL DEFAULT FALSE,
        PRIMARY KEY (owner, name)
    )
    """,
    "CREATE UNIQUE INDEX sieve_script_active ON sieve_script (owner) WHERE active",
    """
    CREATE TABLE sieve_duplicate (
        owner   text NOT NULL,
        handle  text NOT NULL,
        id      text NOT NULL,
        expires double precision NOT NULL,
        PRIMARY KEY (owner, handle, id)
    )
    """,
    "CREATE INDEX sieve_duplicate_expires ON sieve_duplicate (owner, expires)",
    """
    CREATE TABLE timeseries_point (
        series text NOT NULL,
        at     double precision NOT NULL,
        value  double precision NOT NULL,
        PRIMARY KEY (series, at)
    )
    """,
)

# Version 3: the outbound queue of the submission relay (gateway/store/queue.py), so
# mail accepted on one node is relayed even if that node goes away.
_V3 = _statements(
    """
    CREATE TABLE outbound_queue (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        "user"       text NOT NULL,
        route        text NOT NULL,
        mail_from    text NOT NULL,
        recipients   text NOT NULL,
        size         bigint NOT NULL,
        message_id   text,
        content      bytea NOT NULL,
        state        text NOT NULL CHECK (state IN ('queued', 'sent', 'failed', 'expired')),
        queued_at    double precision NOT NULL,
        expires_at   double precision NOT NULL,
        next_attempt double precision NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        last_error   text,
        last_reply   text,
        finished_at  double precision,
        bounced      integer NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX outbound_queue_due ON outbound_queue (state, next_attempt)",
    """
    CREATE TABLE outbound_routes (
        route      text PRIMARY KEY,
        last_error text
    )
    """,
)

# Version 4 (SAVEDATE, RFC 8514, issue 17): the epoch second each row entered its mailbox;
# rows stored before it record their INTERNALDATE (the best knowledge there is), as the
# SQLite migration does, so the column is never NULL.
_V4_SAVEDATE = _statements(
    "ALTER TABLE mailbox_message ADD COLUMN savedate bigint NOT NULL DEFAULT 0",
    "UPDATE mailbox_message mm SET savedate = m.internaldate FROM message m"
    " WHERE m.id = mm.message_id",
)

# Version 5 (SORT and THREAD, RFC 5256, issue 17): the ``sort_key`` rows of
# gateway/store/sorting.py. String keys are stored already case-mapped (i;ascii-casemap),
# so octet order (COLLATE "C") is the collation. Mail stored before it gets its rows from
# the backfill step below (:func:`backfill_sort_keys`).
_V5_SORT_KEYS = _statements(
    """
    CREATE TABLE sort_key (
        message_id   bigint PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
        arrival      bigint NOT NULL,
        sent         bigint NOT NULL,
        size         bigint NOT NULL,
        subject      text COLLATE "C" NOT NULL,
        refwd        integer NOT NULL,
        from_key     text COLLATE "C" NOT NULL,
        to_key       text COLLATE "C" NOT NULL,
        cc_key       text COLLATE "C" NOT NULL,
        display_from text COLLATE "C" NOT NULL,
        display_to   text COLLATE "C" NOT NULL,
        msgid        text,
        refs         text NOT NULL
    )
    """,
)


def backfill_sort_keys(cur: Any) -> None:
    """Schema step: a ``sort_key`` row for every message stored without one (mail that
    arrived before the table existed), computed in Python from the stored header section
    in batches, as the SQLite schema's sort-key step does
    (:func:`gateway.store.sorting.migrate_sort_keys`), and cleaned for ``text`` as the
    insert path cleans it. Idempotent: messages that have their row keep it."""
    last = 0
    while True:
        cur.execute(
            "SELECT m.id, m.internaldate, m.sent_date, m.size, substring(c.raw FROM 1 FOR %s)"
            " FROM message m JOIN content c ON c.message_id = m.id"
            " WHERE m.id > %s AND NOT EXISTS (SELECT 1 FROM sort_key k WHERE k.message_id = m.id)"
            " ORDER BY m.id LIMIT %s",
            (MAX_HEADER_READ, last, BACKFILL_BATCH),
        )
        rows = cur.fetchall()
        if not rows:
            return
        cur.executemany(
            "INSERT INTO sort_key (message_id, arrival, sent, size, subject, refwd, from_key,"
            " to_key, cc_key, display_from, display_to, msgid, refs)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (message_id) DO NOTHING",
            [
                tuple(
                    pg_text(v) if isinstance(v, str) else v
                    for v in sort_key_row(mid, arrival, sent, size, keys_of_raw(bytes(raw)))
                )
                for mid, arrival, sent, size, raw in rows
            ],
        )
        last = rows[-1][0]


# Version 6 (the sort-key backfill): version 5 created ``sort_key`` empty, so a database
# that held mail then could not SORT or THREAD those messages; this step fills their rows.
# Self-contained (touches only ``sort_key``), renumberable.
_V6_SORT_KEY_BACKFILL: Migration = backfill_sort_keys

# Version 7: upstream leases (issue 13, gateway/store/leases.py): which node polls each
# upstream. One row per upstream, kept when released (expires_at set to now) so that the fencing
# token only ever grows; expires_at is written and compared on the database's clock.
# Self-contained (one new table), renumberable.
_V7_UPSTREAM_LEASE = _statements(
    """
    CREATE TABLE upstream_lease (
        upstream    text PRIMARY KEY,
        node        text NOT NULL,
        token       bigint NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at  timestamptz NOT NULL
    )
    """,
)

# Version 8: STORE's server-side function (gateway/store/postgres/flagfunction.py), a flag
# change in one round trip. Self-contained (one new function), renumberable.
_V8_STORE_FLAGS_FUNCTION = _statements(STORE_FLAGS_FUNCTION)

MIGRATIONS: Sequence[Migration] = (
    _V1,
    _V2,
    _V3,
    _V4_SAVEDATE,
    _V5_SORT_KEYS,
    _V6_SORT_KEY_BACKFILL,
    _V7_UPSTREAM_LEASE,
    _V8_STORE_FLAGS_FUNCTION,
)
"""Entry *i* takes a database from version *i* to *i + 1*. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(StoreError):
    """The database was migrated by a newer popgate; this node must not write to it."""


_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " one boolean PRIMARY KEY DEFAULT TRUE CHECK (one), version integer NOT NULL)"
)


def schema_version(cur: Any) -> int:
    """The version recorded in the database (0 for an empty one)."""
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return 0
    cur.execute("SELECT version FROM schema_version")
    row = cur.fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: Any, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to ``len(migrations)``; returns how many steps ran here.

    ``conn`` is a psycopg connection in autocommit mode; each step is one transaction
    holding the migration lock, so concurrent callers (several nodes, or several threads
    of one) serialise and each step runs exactly once.
    """
    target = len(migrations)
    ran = 0
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute(_VERSION_TABLE)
            cur.execute("INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING")
            current = schema_version(cur)
            if current > target:
                raise SchemaTooNew(
                    f"database schema version {current} is newer than this program ({target})"
                )
            if current == target:
                return ran
            migrations[current](cur)
            cur.execute("UPDATE schema_version SET version = %s", (current + 1,))
        ran += 1
