"""What only the SQLite backend promises: file settings, schema versioning, storage layout.

Behaviour common to every backend is in test_store_contract.py; these tests look at the
file itself, through a second, independent sqlite3 connection where that proves more.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.criteria import (
    And,
    Criteria,
    Flag,
    Header,
    Not,
    Or,
    SeqRange,
    SequenceSet,
    Text,
    Uid,
)
from gateway.store.interfaces import INBOX, Delivery, StoreError
from gateway.store.schema import (
    MESSAGE_SIZE_INDEX,
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNew,
    migrate,
)
from gateway.store.search import (
    MAX_INLINE_UID_RANGES,
    MAX_SEARCH_DEPTH,
    MAX_SEARCH_NODES,
    build_query,
)
from gateway.store.sqlite import SQLiteStore

MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Hello\r\n"
    b"Date: Mon, 07 Feb 1994 21:52:25 -0800\r\n\r\nHi Bob\r\n"
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(path, clock=lambda: 1_700_000_000.0)
    s.ensure_user("alice")
    yield s
    s.close()


def peek(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the file through a separate connection: sees only what is committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def inbox(store: SQLiteStore) -> int:
    return store.get_mailbox("alice", INBOX).id


def test_file_uses_wal_full_sync_foreign_keys_and_busy_timeout(
    store: SQLiteStore, path: Path
) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert peek(path, "PRAGMA journal_mode") == [("wal",)]  # persistent in the file


def test_new_file_is_at_the_current_schema_version(store: SQLiteStore, path: Path) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    assert peek(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_reopening_runs_no_migration_and_keeps_data(store: SQLiteStore, path: Path) -> None:
    uid = store.append(inbox(store), MESSAGE, ["\\Seen"])
    before = store.list_mailboxes("alice")
    store.close()
    with SQLiteStore(path) as again:
        assert migrate(again.db) == 0
        assert again.list_mailboxes("alice") == before
        assert again.message_bytes(inbox(again), uid) == MESSAGE


def test_file_newer_than_the_program_is_refused(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        SQLiteStore(path)


def test_added_migration_runs_once_on_an_existing_file(store: SQLiteStore, path: Path) -> None:
    """Later issues append migrations; an existing file is brought forward in place."""
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)

    def add_column(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE mailbox ADD COLUMN note TEXT")

    assert migrate(conn, [*MIGRATIONS, add_column]) == 1
    assert migrate(conn, [*MIGRATIONS, add_column]) == 0
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT note FROM mailbox WHERE name = 'INBOX'").fetchall() == [(None,)]
    conn.close()


def test_failing_migration_leaves_the_version_and_schema_unchanged(
    store: SQLiteStore, path: Path
) -> None:
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)

    def half_done(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE extra (x INTEGER)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError):
        migrate(conn, [*MIGRATIONS, half_done])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
    conn.close()


def test_uidvalidity_sequence_is_seeded_from_the_clock_at_creation(store: SQLiteStore) -> None:
    values = sorted(m.uidvalidity for m in store.list_mailboxes("alice"))
    assert values[0] == 1_700_000_000
    assert values == list(range(values[0], values[0] + len(values)))


def test_listener_runs_after_commit_visible_to_another_connection(
    store: SQLiteStore, path: Path
) -> None:
    seen: list[list[tuple[object, ...]]] = []

    def listener(mailbox_id: int) -> None:
        assert not store.db.in_transaction
        seen.append(
            peek(path, "SELECT uid FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,))
        )

    store.add_listener(listener)
    store.append(inbox(store), MESSAGE)
    assert seen == [[(1,)]]


def test_deliver_commits_message_and_ledger_together(store: SQLiteStore, path: Path) -> None:
    store.deliver("alice", INBOX, Delivery("pop", "u1", MESSAGE))
    rows = peek(
        path,
        "SELECT l.uidl, l.state, c.raw FROM ledger l JOIN content c ON c.message_id = l.message_id",
    )
    assert rows == [("u1", "delivered", MESSAGE)]


def test_a_second_store_on_the_same_file_sees_committed_writes(
    store: SQLiteStore, path: Path
) -> None:
    with SQLiteStore(path) as other:
        other.deliver("alice", INBOX, Delivery("pop", "x", MESSAGE))
    assert store.message_bytes(inbox(store), 1) == MESSAGE
    assert store.known_uidls("pop") == {"x"}


def count(path: Path, table: str) -> int:
    return int(peek(path, f"SELECT count(*) FROM {table}")[0][0])


def test_copies_share_one_message_row_and_the_last_expunge_frees_it(
    store: SQLiteStore, path: Path
) -> None:
    box = inbox(store)
    other = store.create_mailbox("alice", "other").id
    store.deliver("alice", INBOX, Delivery("pop", "u1", MESSAGE))
    store.copy(box, [1], other)
    store.copy(box, [1], box)
    assert (count(path, "message"), count(path, "content"), count(path, "mailbox_message")) == (
        1,
        1,
        3,
    )
    store.store_flags(box, [1, 2], "+", ["\\Deleted"])
    store.expunge(box)
    assert count(path, "content") == 1
    store.delete_mailbox("alice", "other")
    for table in ("message", "content", "header_field", "message_text", "mailbox_message"):
        assert count(path, table) == 0, table
    # The ledger keeps the UIDL (it was fetched) but no longer points at a message.
    assert peek(path, "SELECT uidl, message_id FROM ledger") == [("u1", None)]


def test_metadata_and_content_live_in_separate_tables(store: SQLiteStore, path: Path) -> None:
    store.append(inbox(store), MESSAGE)
    columns = {r[1] for r in peek(path, "PRAGMA table_info(message)")}
    assert "raw" not in columns
    assert peek(path, "SELECT raw FROM content") == [(MESSAGE,)]


def test_mailbox_counts_read_sizes_from_the_covering_index_not_the_message_rows(
    store: SQLiteStore,
) -> None:
    """STATUS and the web page's store sizes sum RFC822.SIZE: through the narrow
    (id, size) index, since each wide ``message`` row takes about a page of the file
    (a 100,000-message mailbox pulled ~230 MiB into the mmap'd RSS, issue 19)."""
    box = inbox(store)
    for _ in range(3):
        store.append(box, MESSAGE)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    try:
        counts = store.counts(box)
    finally:
        store.db.set_trace_callback(None)
    assert counts.size == 3 * len(MESSAGE)
    (summing,) = [s for s in statements if "total(" in s]
    plan = " / ".join(r[3] for r in store.db.execute("EXPLAIN QUERY PLAN " + summing))
    assert f"COVERING INDEX {MESSAGE_SIZE_INDEX}" in plan, plan


def test_search_runs_a_single_query_over_the_mailbox(store: SQLiteStore) -> None:
    box = inbox(store)
    for _ in range(5):
        store.append(box, MESSAGE)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    try:
        store.search(box, And((Header("subject", "hello"), Not(Flag("\\Seen")))))
    finally:
        store.db.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    searches = [s for s in selects if "header_field" in s]
    assert len(searches) == 1
    assert len(selects) <= 3  # mailbox check, max(uid), the search itself


@pytest.mark.parametrize(
    "criteria",
    [
        Header("subject", "x') OR 1=1 --"),
        Header("x') OR 1=1 --", ""),
        Text("TEXT", "x') OR 1=1 --"),
        Flag("x')OR(1=1--"),
    ],
)
def test_search_user_values_are_bound_not_spliced(store: SQLiteStore, criteria: Criteria) -> None:
    """Every user value reaches SQLite as a parameter; the SQL text is fixed."""
    box = inbox(store)
    store.append(box, MESSAGE)
    query = build_query(box, criteria, 1)
    assert "1=1" not in query.sql
    assert any("1=1" in str(p) for p in query.params)
    assert store.search(box, criteria) == []


def _uid_set(start: int) -> Uid:
    return Uid(
        SequenceSet(
            tuple(SeqRange(start + 2 * i, start + 2 * i) for i in range(MAX_INLINE_UID_RANGES))
        )
    )


def test_largest_accepted_criteria_trees_execute_in_sqlite(store: SQLiteStore) -> None:
    """The caps keep SQLite's expression-depth and parameter limits out of reach."""
    box = inbox(store)
    for _ in range(3):
        store.append(box, MESSAGE)
    wide: Criteria = And(tuple(_uid_set(i) for i in range(MAX_SEARCH_NODES - 1)))
    assert store.search(box, wide) == []
    deep: Criteria = _uid_set(1)
    for level in range(MAX_SEARCH_DEPTH - 1):
        deep = Or(deep, _uid_set(level)) if level % 2 else Not(deep)
    assert isinstance(store.search(box, deep), list)
    many = Uid(SequenceSet(tuple(SeqRange(i, i) for i in range(1, 5000, 2))))
    assert store.search(box, many) == [1, 3]


def test_internaldate_day_is_the_calendar_day_in_its_own_offset(
    store: SQLiteStore, path: Path
) -> None:
    """RFC 3501 §6.4.4 compares dates "disregarding time and timezone": the stored day is
    the date as written, not the UTC date."""
    zone = datetime.timezone(datetime.timedelta(hours=-10))
    when = datetime.datetime(2024, 12, 31, 22, 0, tzinfo=zone)  # 2025-01-01 in UTC
    store.append(inbox(store), MESSAGE, internaldate=when)
    ((day, minutes),) = peek(path, "SELECT internal_day, internaldate_tz FROM message")
    assert datetime.date.fromordinal(day) == datetime.date(2024, 12, 31)
    assert minutes == -600


def test_closed_store_refuses_calls(path: Path) -> None:
    s = SQLiteStore(path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError):
        s.list_mailboxes("alice")
