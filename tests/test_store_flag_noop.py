"""A STORE that changes nothing, in SQLite mode: one read, no write transaction (issue 19).

Most STOREs of a mail client set a flag that is already there or clear one that is not;
:meth:`SQLiteMessages.store_flags` reads the rows first and ends there when its plan
writes nothing. These tests pin what that may and may not change: the result (including
``unchanged``, the rows the handler's untagged FETCH shows, RFC 3501 §6.4.6), the
modseq, the commit counters, and that a STORE that does change something still runs
under ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store.errors import MailboxNotFound
from gateway.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "s.sqlite")
    s.ensure_user("alice")
    yield s
    s.close()


def _box_with_two(store: SQLiteStore) -> tuple[int, list[int]]:
    box = store.get_mailbox("alice", "INBOX")
    uids = [store.append(box.id, b"Subject: %d\r\n\r\nbody\r\n" % n, ["\\Seen"]) for n in (1, 2)]
    return box.id, uids


def test_a_store_that_changes_nothing_writes_nothing(store: SQLiteStore) -> None:
    """+FLAGS of a flag every message has, -FLAGS of one none has: one statement (the
    rows), no BEGIN, no counter moved, HIGHESTMODSEQ unchanged; ``unchanged`` holds
    every message as ``message_flags`` reads it."""
    box, uids = _box_with_two(store)
    before = store.get_mailbox("alice", "INBOX").highestmodseq
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    with store.deferred_sync(lazy_flags=True):
        for mode, flag in (("+", "\\Seen"), ("-", "\\Flagged"), ("-", "$Label1")):
            statements.clear()
            result = store.store_flags(box, uids, mode, [flag])
            assert result.updated == [] and result.modified == []
            assert len(statements) == 1 and statements[0].startswith("SELECT"), statements
            assert result.unchanged == store.message_flags(box, uids)
    store.db.set_trace_callback(None)
    assert (store.commit_seq, store.lazy_seq) == (0, 0)
    assert store.get_mailbox("alice", "INBOX").highestmodseq == before


def test_a_store_that_changes_something_still_locks_and_reports_the_rest(
    store: SQLiteStore,
) -> None:
    """One of two messages changes: the write is one BEGIN IMMEDIATE transaction, the
    changed row comes back in ``updated`` with the new modseq, the other in
    ``unchanged`` with its own."""
    box, uids = _box_with_two(store)
    store.store_flags(box, [uids[0]], "+", ["\\Flagged"])
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    with store.deferred_sync(lazy_flags=True):
        result = store.store_flags(box, uids, "+", ["\\Flagged"])
    store.db.set_trace_callback(None)
    assert "BEGIN IMMEDIATE" in statements and "COMMIT" in statements
    assert [row.uid for row in result.updated] == [uids[1]]
    assert result.unchanged == store.message_flags(box, [uids[0]])
    assert store.lazy_seq == 1
    assert {"\\Seen", "\\Flagged"} <= store.message_flags(box, uids)[1].flags


def test_unchangedsince_refusals_need_no_write(store: SQLiteStore) -> None:
    """RFC 7162 §3.1.3: a message changed after UNCHANGEDSINCE is MODIFIED, and with
    nothing else to write no transaction is taken."""
    box, uids = _box_with_two(store)
    store.store_flags(box, [uids[0]], "+", ["\\Flagged"])
    stale = store.get_mailbox("alice", "INBOX").highestmodseq - 1
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    result = store.store_flags(box, [uids[0]], "-", ["\\Flagged"], unchangedsince=stale)
    store.db.set_trace_callback(None)
    assert result.modified == [uids[0]] and result.updated == [] and result.unchanged == []
    assert not any(s.startswith("BEGIN") for s in statements)


def test_a_gone_mailbox_is_still_refused(store: SQLiteStore) -> None:
    """No rows and no mailbox (deleted after its kind was looked up once): the read finds
    nothing and MailboxNotFound is raised, as under the lock."""
    store.create_mailbox("alice", "Old")
    box = store.get_mailbox("alice", "Old").id
    uid = store.append(box, b"Subject: x\r\n\r\nbody\r\n", ["\\Seen"])
    store.store_flags(box, [uid], "+", ["\\Seen"])
    store.delete_mailbox("alice", "Old")
    with pytest.raises(MailboxNotFound):
        store.store_flags(box, [uid], "+", ["\\Seen"])
