"""The SQLite store's change stamp read from the WAL-index header (gateway/store/sqlite/walindex.py).

What must hold: every commit by another connection (a CLI command, the web server) changes
the stamp, including one that lands between this connection's COMMIT and its check;
this connection's own writes through the store do not (the catch-up's cache depends on
it, gateway/store/sqlite/quiet.py); and where no header can be mapped the PRAGMA answers.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite.walindex import CommitWatch


def _store(tmp_path: Path) -> tuple[SQLiteStore, int]:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.ensure_user("alice")
    inbox = store.get_mailbox("alice", "INBOX").id
    store.append(inbox, b"Subject: x\r\n\r\nbody\r\n")
    return store, inbox


def _other(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)


def _foreign_commit(other: sqlite3.Connection) -> None:
    other.execute("UPDATE meta SET value = value + 1 WHERE key = 'uidvalidity'")


def test_another_connections_commit_changes_the_stamp_and_no_change_costs_a_statement(
    tmp_path: Path,
) -> None:
    store, _inbox = _store(tmp_path)
    other = _other(tmp_path)
    try:
        assert store._commits.mapped
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        first = store._change_stamp()
        assert store._change_stamp() == first
        _foreign_commit(other)
        second = store._change_stamp()
        assert second != first
        assert store._change_stamp() == second
        store.db.set_trace_callback(None)
        assert statements == ["PRAGMA data_version"]  # once, when the header had changed
    finally:
        other.close()
        store.close()


def test_own_writes_leave_the_other_connections_part_alone(tmp_path: Path) -> None:
    store, inbox = _store(tmp_path)
    try:
        version = store._change_stamp()[1]
        uid = store.append(inbox, b"Subject: y\r\n\r\nbody\r\n")
        store.store_flags(inbox, [uid], "+", ["\\Flagged"])
        store.clear_recent(inbox, [uid])
        store.store_flags(inbox, [uid], "+", ["\\Deleted"])
        store.expunge(inbox, [uid])
        assert store._change_stamp()[1] == version
    finally:
        store.close()


def test_a_commit_right_after_ours_is_not_taken_for_ours(tmp_path: Path) -> None:
    """Another connection commits between this connection's COMMIT and its check."""
    store, _inbox = _store(tmp_path)
    other = _other(tmp_path)
    try:
        conn, watch = store.db, store._commits
        for own_writes_a_page in (True, False):
            before = watch.version(conn)
            conn.execute("BEGIN IMMEDIATE")
            assert watch.version(conn) == before
            # The same value again writes no page: the header moves for the other's only.
            step = 1 if own_writes_a_page else 0
            conn.execute("UPDATE mailbox SET uidnext = uidnext + ?", (step,))
            conn.execute("COMMIT")
            _foreign_commit(other)
            watch.committed(conn)
            assert watch.version(conn) != before
    finally:
        other.close()
        store.close()


def test_a_wal_started_over_by_our_own_write_is_ours(tmp_path: Path) -> None:
    store, inbox = _store(tmp_path)
    try:
        version = store._change_stamp()[1]
        store.checkpoint()  # everything copied back: the next write starts the WAL over
        store.append(inbox, b"Subject: z\r\n\r\nbody\r\n")
        assert store._change_stamp()[1] == version
    finally:
        store.close()


def test_random_interleavings_never_miss_another_connections_commit(tmp_path: Path) -> None:
    """Own writes, other connections' commits and checkpoints in random order: after a
    step with another connection's commit the stamp has changed; after two steps without
    one, own writes left it alone."""
    store, inbox = _store(tmp_path)
    other = _other(tmp_path)
    rng = random.Random(19)
    try:
        uids = [store.append(inbox, b"Subject: %d\r\n\r\nbody\r\n" % i) for i in range(5)]
        last = store._change_stamp()[1]
        foreign_before = True
        for _ in range(300):
            foreign = rng.random() < 0.3
            if foreign:
                _foreign_commit(other)
            for _ in range(rng.randrange(3)):
                kind = rng.random()
                if kind < 0.5:
                    sign = rng.choice("+-")
                    store.store_flags(inbox, [rng.choice(uids)], sign, ["\\Seen"])
                elif kind < 0.7:
                    uids.append(store.append(inbox, b"Subject: n\r\n\r\nbody\r\n"))
                elif kind < 0.8:
                    store.checkpoint()
                else:
                    store.clear_recent(inbox, uids)
            if rng.random() < 0.2:
                _foreign_commit(other)
                foreign = True
            now = store._change_stamp()[1]
            if foreign:
                assert now != last
            elif not foreign_before:
                assert now == last
            last, foreign_before = now, foreign
    finally:
        other.close()
        store.close()


def test_without_a_mapped_header_the_pragma_answers(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    watch = CommitWatch()
    watch.open(conn, Path(":memory:"))
    assert not watch.mapped
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert watch.version(conn) == conn.execute("PRAGMA data_version").fetchone()[0]
    watch.committed(conn)
    assert statements == ["PRAGMA data_version", "PRAGMA data_version"]
    path = tmp_path / "rollback.sqlite"
    journal = sqlite3.connect(path, isolation_level=None)  # a rollback journal: no -shm
    journal.execute("CREATE TABLE t (x)")
    watch.open(journal, path)
    assert not watch.mapped
    journal.close()
    conn.close()
