"""The outbound queue is part of the SQLite store's schema (issue 15): a store file from
before the queue is upgraded in place, keeps its mail, and the queue then lives in the
same file (so a backup carries it)."""

from __future__ import annotations

import sqlite3

from gateway.store.queue import NewOutbound
from gateway.store.schema import MIGRATIONS, migrate, schema_version
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_queue import QUEUE_DDL, SQLiteOutboundQueue


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _queue_version() -> int:
    """The schema version that brings the queue (found, not hard-coded: versions for
    other tables may be numbered around it)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for version in range(1, len(MIGRATIONS) + 1):
        migrate(conn, MIGRATIONS[:version])
        if "outbound_queue" in _tables(conn):
            return version
    raise AssertionError("no migration creates the outbound queue")


QUEUE_VERSION = _queue_version()


def test_queue_tables_come_with_a_migration():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS[: QUEUE_VERSION - 1])
    assert "outbound_queue" not in _tables(conn)
    assert migrate(conn) == len(MIGRATIONS) - QUEUE_VERSION + 1
    assert {"outbound_queue", "outbound_routes"} <= _tables(conn)


def test_an_older_store_file_upgrades_and_keeps_its_mail(tmp_path):
    path = tmp_path / "popgate.sqlite3"
    conn = sqlite3.connect(str(path), isolation_level=None)
    migrate(conn, MIGRATIONS[: QUEUE_VERSION - 1])
    conn.close()
    # mail written by the older schema (through today's store, then rolled back a version)
    with SQLiteStore(path) as store:
        store.ensure_user("alice")
        inbox = store.get_mailbox("alice", "INBOX")
        uid = store.append(inbox.id, b"Subject: old\r\n\r\nbody\r\n")
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("DROP TABLE outbound_queue")
    conn.execute("DROP TABLE outbound_routes")
    conn.execute(f"PRAGMA user_version = {QUEUE_VERSION - 1}")
    conn.close()

    with SQLiteStore(path) as store:
        assert schema_version(store.db) == len(MIGRATIONS)
        assert store.message_bytes(inbox.id, uid).startswith(b"Subject: old")
        queue = SQLiteOutboundQueue(store.db)
        item = queue.enqueue(
            NewOutbound("alice", "alice-isp", "alice@isp.example", ("bob@example.org",), b"x"),
            now=1.0,
            lifetime=60.0,
        )
    with SQLiteStore(path) as store:
        assert SQLiteOutboundQueue(store.db).get(item.id).state == "queued"


def test_a_file_whose_queue_predates_the_migration_keeps_it():
    """A development build created the queue tables on open (``QUEUE_DDL``); the
    migration is idempotent and keeps their rows."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS[: QUEUE_VERSION - 1])
    queue = SQLiteOutboundQueue(conn)
    queue.enqueue(NewOutbound("a", "r", "a@x", ("b@y",), b"m"), now=1.0, lifetime=60.0)
    migrate(conn)
    assert len(queue.pending()) == 1
    assert QUEUE_DDL.count("CREATE") == 3
