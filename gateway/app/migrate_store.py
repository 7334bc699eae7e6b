"""Moving a single-node SQLite store into PostgreSQL exactly: ``popgate migrate-store`` (issue 13).

``popgate migrate-store --config NEW.toml --from /var/lib/popgate/popgate.sqlite3`` copies
every table a client or the fetcher can observe from the SQLite file into the empty
PostgreSQL database NEW.toml's ``[store]`` names, row for row, so that nobody notices
the move:

* mailbox ids (the RFC 8474 MAILBOXID), UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ
  (RFC 3501 §2.3.1.1, RFC 7162 §3.1.1), every row's UID, flags, modseq and save date,
  the expunged UIDs with their modseqs (QRESYNC VANISHED, RFC 7162 §3.2.10) and each
  household member's own \\Seen: a CONDSTORE/QRESYNC client resyncs with no UIDVALIDITY
  change and sees only what changed since;
* messages with their bytes and the analysis computed at ingest (ENVELOPE,
  BODYSTRUCTURE, search text, sort keys; the SHA-256 behind the EMAILID), copied rather
  than recomputed, since both backends write those columns with the same code
  (:mod:`gateway.store.rowdata`);
* the POP3 ledger (every UIDL per upstream with its state and ``fetched_at``, so nothing
  is fetched twice and "delete after N days" keeps its clock), subscriptions, known login
  sources, Sieve scripts with the active one and RFC 7352 duplicate records, the outbound
  queue, the web page's history, and the UIDVALIDITY counter (``meta``); quota usage is
  the sum of the copied sizes.

Safety:

* the source is opened read-only (``mode=ro``) and read in one snapshot; a gateway
  answering on the control socket next to it (or in NEW.toml's ``state_dir``) makes the
  command refuse: stop the node first, or mail it fetches meanwhile would stay behind;
* the target's schema is migrated first, then everything is copied in ONE transaction
  that holds the schema-migration lock (so a node started meanwhile waits at its own
  migration step) and begins by checking the target is empty: a failure at any point
  rolls back to the empty database, and a non-empty target is refused, naming what it
  holds;
* rows stream from a SQLite cursor into PostgreSQL's binary ``COPY`` (psycopg 3
  ``cursor.copy``), so memory stays flat however many messages there are; ids are kept
  and the identity sequences moved past them (past every mailbox id SQLite ever handed
  out, deleted ones included, so a MAILBOXID is never reused);
* the copied row counts are checked against the source's before the commit.

Tables that exist only in SQLite (the FTS5 text index and its backlog, SQLite's own
sequence table) are not copied: :data:`SQLITE_ONLY` says why for each, and a test checks
that every table of the SQLite schema is either copied or listed there.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

from gateway.app import control
from gateway.core.display import printable
from gateway.store.errors import StoreError
from gateway.store.interfaces import SHARED_OWNER_PREFIX
from gateway.store.postgres.schema import MIGRATION_LOCK, migrate
from gateway.store.postgres.text import pg_text
from gateway.store.schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

PROGRESS_ROWS = 10_000
"""Rows of one table copied between two progress lines."""

BUSY_TIMEOUT_MS = 10_000
"""How long opening the source waits for a lock (a checkpoint of a node just stopped)."""

CONTROL_TIMEOUT = 5.0
"""Seconds a gateway has to answer on its control socket when asked whether it runs."""


class MigrateStoreError(Exception):
    """The migration cannot be done as asked; the text says why and what to do."""


class TargetNotEmpty(MigrateStoreError):
    """The PostgreSQL database already holds rows; migrate-store only fills an empty one."""


class SourceInUse(MigrateStoreError):
    """A gateway still runs on the source (it could fetch mail the copy would miss)."""


@dataclass(frozen=True)
class TableCopy:
    """One table copied as is: its PostgreSQL ``columns`` filled from the SQLite
    ``source`` columns (the same names but where the SQLite schema differs), in
    ``order`` (the primary key, so the copy is deterministic)."""

    table: str
    columns: tuple[str, ...]
    order: str
    source: tuple[str, ...] = ()
    identity: bool = False
    """The table's ``id`` is an identity column: moved past the copied ids afterwards."""

    @property
    def source_columns(self) -> tuple[str, ...]:
        return self.source or self.columns

    def select(self) -> str:
        names = ", ".join(f'"{c}"' for c in self.source_columns)
        return f"SELECT {names} FROM {self.table} ORDER BY {self.order}"


_MESSAGE_COLUMNS = (
    "id",
    "sha256",
    "size",
    "internaldate",
    "internaldate_tz",
    "internal_day",
    "sent_date",
    "sent_day",
    "message_id_header",
    "envelope",
    "bodystructure",
    "body",
    "parts",
)
_SORT_KEY_COLUMNS = (
    "message_id",
    "arrival",
    "sent",
    "size",
    "subject",
    "refwd",
    "from_key",
    "to_key",
    "cc_key",
    "display_from",
    "display_to",
    "msgid",
    "refs",
)
_QUEUE_COLUMNS = (
    "id",
    "user",
    "route",
    "mail_from",
    "recipients",
    "size",
    "message_id",
    "content",
    "state",
    "queued_at",
    "expires_at",
    "next_attempt",
    "attempts",
    "last_error",
    "last_reply",
    "finished_at",
    "bounced",
)

TABLES: tuple[TableCopy, ...] = (
    TableCopy(
        "mailbox",
        ("id", "owner", "name", "uidvalidity", "uidnext", "highestmodseq", "special_use"),
        "id",
        identity=True,
    ),
    TableCopy("subscription", ("owner", "name"), "owner, name"),
    TableCopy("message", _MESSAGE_COLUMNS, "id", identity=True),
    TableCopy("content", ("message_id", "raw"), "message_id"),
    TableCopy(
        "mailbox_message",
        ("mailbox_id", "uid", "message_id", "flags", "modseq", "recent", "savedate"),
        "mailbox_id, uid",
    ),
    TableCopy("expunged", ("mailbox_id", "uid", "modseq"), "mailbox_id, uid"),
    TableCopy(
        "private_flag",
        ("mailbox_id", "viewer", "uid", "seen", "modseq"),
        "mailbox_id, user, uid",
        source=("mailbox_id", "user", "uid", "seen", "modseq"),
    ),
    TableCopy(
        "header_field", ("message_id", "name", "pos", "value_folded"), "message_id, name, pos"
    ),
    TableCopy("message_text", ("message_id", "header_folded", "text_folded"), "message_id"),
    TableCopy("sort_key", _SORT_KEY_COLUMNS, "message_id"),
    TableCopy(
        "ledger",
        ("upstream", "uidl", "message_id", "state", "reason", "fetched_at", "size"),
        "upstream, uidl",
    ),
    TableCopy("known_source", ("user", "source", "seen"), "user, source"),
    TableCopy("sieve_script", ("owner", "name", "text", "active"), "owner, name"),
    TableCopy("sieve_duplicate", ("owner", "handle", "id", "expires"), "owner, handle, id"),
    TableCopy("timeseries_point", ("series", "at", "value"), "series, at"),
    TableCopy("outbound_queue", _QUEUE_COLUMNS, "id", identity=True),
    TableCopy("outbound_routes", ("route", "last_error"), "route"),
)
"""What is copied, parents before children (the foreign keys hold at every row)."""

SQLITE_ONLY: dict[str, str] = {
    "meta": "merged: the UIDVALIDITY counter moves up to the source's value",
    "sqlite_sequence": "SQLite's AUTOINCREMENT record: moves the identity sequences",
    "message_text_index": "SQLite FTS5 index (PostgreSQL searches message_text itself)",
    "message_text_index_config": "part of the FTS5 index",
    "message_text_index_data": "part of the FTS5 index",
    "message_text_index_docsize": "part of the FTS5 index",
    "message_text_index_idx": "part of the FTS5 index",
    "message_text_unindexed": "the FTS5 index's backlog",
}
"""SQLite tables not copied, and why."""

REQUIRED_SOURCE_TABLES = frozenset({"mailbox", "message", "mailbox_message", "ledger", "meta"})
"""Tables a file must have to be taken for a popgate store."""


@dataclass
class Summary:
    """What was copied: the figures ``migrate-store`` prints at the end."""

    rows: dict[str, int] = field(default_factory=dict)
    users: int = 0
    shared_trees: int = 0
    upstreams: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        r = self.rows.get
        return [
            f"users: {self.users} (and {self.shared_trees} shared trees)",
            f"mailboxes: {r('mailbox', 0)}",
            f"messages: {r('mailbox_message', 0)} in mailboxes, {r('message', 0)} stored, "
            f"{self.bytes} bytes",
            f"ledger rows: {r('ledger', 0)} over {self.upstreams} upstreams",
            f"subscriptions: {r('subscription', 0)}, Sieve scripts: {r('sieve_script', 0)}, "
            f"queued outbound: {r('outbound_queue', 0)}",
            f"done in {self.seconds:.1f} s",
        ]


Progress = Callable[[str], None]


# ---- the source ------------------------------------------------------------------------


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite store at ``path``, read-only, after checking it is one this popgate
    copies (a popgate store at the current schema version)."""
    if not path.exists():
        raise MigrateStoreError(
            f"{path}: no such file (--from names the SQLite store, STATE_DIR/popgate.sqlite3)"
        )
    if not path.is_file():
        raise MigrateStoreError(f"{path}: not a file (--from names the SQLite store file)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise MigrateStoreError(f"{path}: cannot open read-only: {e}") from None
    # Text PostgreSQL could not hold at all (invalid UTF-8) is read replaced, not fatal.
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        tables = _source_tables(conn)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as e:
        conn.close()
        raise MigrateStoreError(f"{path}: not a readable SQLite store: {e}") from None
    problem = None
    missing = REQUIRED_SOURCE_TABLES - tables
    if missing:
        problem = f"{path}: not a popgate store (no table {', '.join(sorted(missing))})"
    elif version < SQLITE_SCHEMA_VERSION:
        problem = (
            f"{path}: SQLite schema version {version}, this popgate copies version "
            f"{SQLITE_SCHEMA_VERSION}: start this popgate once on the old config (popgate "
            "serve, then stop it) so it upgrades the file, then migrate"
        )
    elif version > SQLITE_SCHEMA_VERSION:
        problem = (
            f"{path}: made by a newer popgate (SQLite schema version {version}, this one "
            f"knows {SQLITE_SCHEMA_VERSION}); upgrade popgate first"
        )
    if problem is not None:
        conn.close()
        raise MigrateStoreError(problem)
    return conn


def _source_tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_not_running(state_dirs: Iterable[Path]) -> None:
    """Refuse while a gateway answers on the control socket of any of these state dirs:
    it could still fetch (or change) mail the copy would not carry."""
    for where in dict.fromkeys(state_dirs):
        try:
            control.request(where, {"command": "status"}, timeout=CONTROL_TIMEOUT)
        except control.GatewayNotRunning:
            continue
        except (control.ControlError, TimeoutError, OSError) as e:
            raise SourceInUse(
                f"cannot tell whether popgate runs in {where} ({e}); stop it first"
            ) from None
        raise SourceInUse(
            f"popgate is running in {where}: stop it first (systemctl stop popgate), "
            "then migrate, then start the node on PostgreSQL"
        )


# ---- the target ------------------------------------------------------------------------


def connect_target(dsn: str, password: str | None) -> psycopg.Connection:
    """An autocommit connection to the target (the schema migration wants one)."""
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
    if password is not None:
        kwargs["password"] = password
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise MigrateStoreError(f"cannot connect to PostgreSQL: {text}") from None


def check_empty(cur: psycopg.Cursor) -> None:
    """Raise :class:`TargetNotEmpty` naming every copied table that holds rows."""
    found = []
    for spec in TABLES:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table)))
        row = cur.fetchone()
        if row and row[0]:
            found.append(f"{spec.table}: {row[0]} rows")
    if found:
        more = f", and {len(found) - 4} more tables" if len(found) > 4 else ""
        raise TargetNotEmpty(
            f"the PostgreSQL database is not empty ({', '.join(found[:4])}{more}); migrate-store "
            "only fills an empty one: point [store] dsn at a new database (or drop and "
            "recreate this one) and run it again"
        )


def _column_types(cur: psycopg.Cursor, table: str, columns: Sequence[str]) -> list[tuple[int, str]]:
    """(type oid, type name) of each column, in ``columns`` order."""
    cur.execute(
        "SELECT a.attname, a.atttypid::int, t.typname FROM pg_attribute a"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        (table,),
    )
    types = {name: (oid, typname) for name, oid, typname in cur.fetchall()}
    missing = [c for c in columns if c not in types]
    if missing:
        raise MigrateStoreError(f"target table {table} has no column {', '.join(missing)}")
    return [types[c] for c in columns]


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _as_text(value: Any) -> str:
    # Text is read with invalid UTF-8 replaced (no surrogates), so NUL is all that is left
    # for pg_text to clean; the common case costs one type check and one scan.
    if type(value) is str and "\x00" not in value:
        return value
    return pg_text(str(value))


_CONVERT: dict[str, Callable[[Any], Any] | None] = {
    "int2": None,
    "int4": None,
    "int8": None,
    "float8": float,
    "bool": bool,
    "text": _as_text,
    "bytea": _as_bytes,
}
"""SQLite value → what binary COPY of the column's type takes (None: as read; SQLite's
INTEGER affinity already gives ints, and a stray value fails the COPY, rolled back)."""


def _converter(typnames: Sequence[str]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    try:
        funcs = [_CONVERT[t] for t in typnames]
    except KeyError as e:
        raise MigrateStoreError(f"no conversion for PostgreSQL type {e.args[0]}") from None
    steps = [(i, f) for i, f in enumerate(funcs) if f is not None]

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i, f in steps:
            if values[i] is not None:
                values[i] = f(values[i])
        return tuple(values)

    return convert if steps else (lambda row: row)


def copy_table(
    src: sqlite3.Connection, cur: psycopg.Cursor, spec: TableCopy, total: int, progress: Progress
) -> tuple[int, int]:
    """Stream one table through binary COPY; returns (rows, bytes of ``raw`` copied)."""
    types = _column_types(cur, spec.table, spec.columns)
    convert = _converter([t for _oid, t in types])
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(spec.table), sql.SQL(", ").join(map(sql.Identifier, spec.columns))
    )
    raw_at = spec.columns.index("raw") if "raw" in spec.columns else None
    rows = size = 0
    with cur.copy(statement) as copy:
        copy.set_types([oid for oid, _t in types])
        for row in src.execute(spec.select()):
            copy.write_row(convert(row))
            rows += 1
            if raw_at is not None:
                size += len(row[raw_at])
            if rows % PROGRESS_ROWS == 0:
                progress(f"{spec.table}: {rows}/{total}")
    progress(f"{spec.table}: {rows} rows")
    return rows, size


def _move_identities(src: sqlite3.Connection, cur: psycopg.Cursor) -> None:
    """Identity sequences start past every copied id and past every id SQLite's
    AUTOINCREMENT ever gave (a deleted mailbox's id is never reused: RFC 8474 §4)."""
    handed_out = {}
    if "sqlite_sequence" in _source_tables(src):
        handed_out = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    for spec in TABLES:
        if not spec.identity:
            continue
        cur.execute(sql.SQL("SELECT max(id) FROM {}").format(sql.Identifier(spec.table)))
        row = cur.fetchone()
        top = max(int(row[0] or 0) if row else 0, int(handed_out.get(spec.table) or 0))
        cur.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", (spec.table, top + 1)
        )


def _merge_meta(src: sqlite3.Connection, cur: psycopg.Cursor) -> None:
    """Store-wide counters (the UIDVALIDITY sequence): the larger value wins, so no
    UIDVALIDITY handed out on SQLite is handed out again."""
    cur.executemany(
        "INSERT INTO meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)",
        [(pg_text(str(k)), int(v)) for k, v in src.execute("SELECT key, value FROM meta")],
    )


def _verify(cur: psycopg.Cursor, copied: dict[str, int], expected: dict[str, int]) -> None:
    for spec in TABLES:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table)))
        row = cur.fetchone()
        found = int(row[0]) if row else 0
        if not (found == copied[spec.table] == expected[spec.table]):
            raise MigrateStoreError(
                f"{spec.table}: {expected[spec.table]} rows in the source, "
                f"{copied[spec.table]} copied, {found} in the target; nothing was committed"
            )


@contextlib.contextmanager
def _snapshot(src: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every SELECT of the copy sees the same commit."""
    src.execute("BEGIN")
    try:
        yield
    finally:
        src.execute("COMMIT")


def migrate_store(
    source: Path, dsn: str, *, password: str | None = None, progress: Progress = lambda _: None
) -> Summary:
    """Copy the SQLite store at ``source`` into the empty PostgreSQL database ``dsn``
    (see the module docstring). Raises :class:`MigrateStoreError`; the target is left
    empty (its schema migrated) when anything fails."""
    started = time.monotonic()
    src = open_source(source)
    try:
        target = connect_target(dsn, password)
        try:
            ran = migrate(target)
            progress(f"target schema: {ran} migration steps run")
            summary = _copy_all(src, target, progress)
        except psycopg.Error as e:
            text = " ".join(str(e).split()) or type(e).__name__
            raise MigrateStoreError(f"PostgreSQL: {text}; nothing was committed") from None
        except StoreError as e:  # SchemaTooNew: a newer popgate made this database
            raise MigrateStoreError(f"PostgreSQL: {e}") from None
        finally:
            target.close()
    finally:
        src.close()
    summary.seconds = time.monotonic() - started
    return summary


def _copy_all(src: sqlite3.Connection, target: psycopg.Connection, progress: Progress) -> Summary:
    summary = Summary()
    with _snapshot(src), target.transaction(), target.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        check_empty(cur)
        expected = {
            spec.table: int(src.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0])
            for spec in TABLES
        }
        for spec in TABLES:
            rows, size = copy_table(src, cur, spec, expected[spec.table], progress)
            summary.rows[spec.table] = rows
            summary.bytes += size
        _merge_meta(src, cur)
        _move_identities(src, cur)
        _verify(cur, summary.rows, expected)
        owners = [r[0] for r in src.execute("SELECT DISTINCT owner FROM mailbox")]
        summary.shared_trees = sum(o.startswith(SHARED_OWNER_PREFIX) for o in owners)
        summary.users = len(owners) - summary.shared_trees
        summary.upstreams = int(
            src.execute("SELECT count(DISTINCT upstream) FROM ledger").fetchone()[0]
        )
        progress("committing")
    return summary


# ---- the command -----------------------------------------------------------------------


def run(
    config_path: str, source: str, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``popgate migrate-store``: 0 when the store was copied, 1 when it was refused or
    failed (the reason on ``err``, default stderr; the target is then left empty)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    from gateway.app import config as configmod

    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(printable(problem), file=err)
        return 1
    if cfg.store.backend != "postgresql" or not cfg.store.dsn:
        print(
            printable(
                f"popgate: {config_path}: [store] backend is {cfg.store.backend!r}; migrate-store "
                'copies into PostgreSQL: give it the new config (backend = "postgresql", dsn)'
            ),
            file=err,
        )
        return 1
    path = Path(source)

    def say(line: str) -> None:
        print(printable(f"migrate-store: {line}"), file=out, flush=True)

    try:
        check_not_running([path.parent, Path(cfg.state_dir)])
        say(f"copying {path} into {cfg.store.dsn}")
        summary = migrate_store(path, cfg.store.dsn, password=cfg.store.password, progress=say)
    except MigrateStoreError as e:
        print(printable(f"popgate: migrate-store: {e}"), file=err)
        return 1
    for line in summary.lines():
        say(line)
    say("start the node(s) with this config; keep the SQLite file as the backup")
    return 0
