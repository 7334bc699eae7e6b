"""The SQLite store's catch-up cache across its own writes (gateway/store/sqlite/quiet.py).

``changes_since`` answers from a kept HIGHESTMODSEQ, and from the rows of the STORE just
made, instead of reading the mailbox; a write keeps the heads of the mailboxes it did not
change. Whatever happens, the answer must equal a fresh read: a second store opened on
the same file, which has no cache, is the reference.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gateway.store.errors import MailboxNotFound
from gateway.store.sqlite import SQLiteStore


def _answers(store: SQLiteStore, boxes: list[int], low: int) -> list:
    out = []
    for box in boxes:
        top = store.changes_since(box, 0).highestmodseq
        for modseq in range(max(0, low), top + 1):
            c = store.changes_since(box, modseq)
            out.append((box, modseq, c.highestmodseq, list(c.changed), list(c.expunged)))
    return out


def test_random_writes_answer_as_a_fresh_read(tmp_path: Path) -> None:
    """STORE (changing and not), APPEND, EXPUNGE, the \\Recent claim, and commits by
    another connection, in random order; after each, every mailbox's changes since
    each recent modseq equal what a store without the cache reads."""
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    other = SQLiteStore(path)
    rng = random.Random(5)
    try:
        store.ensure_user("alice")
        store.create_mailbox("alice", "B")
        boxes = [store.get_mailbox("alice", n).id for n in ("INBOX", "B")]
        uids = {
            b: [store.append(b, b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(6)] for b in boxes
        }
        for step in range(120):
            box = rng.choice(boxes)
            kind = rng.random()
            live = uids[box]
            writer = other if kind < 0.1 else store
            if kind < 0.6 and live:
                picked = rng.sample(live, rng.randint(1, min(3, len(live))))
                writer.store_flags(
                    box, picked, rng.choice("+-"), [rng.choice(["\\Seen", "\\Deleted", "$A"])]
                )
            elif kind < 0.7:
                live.append(writer.append(box, b"Subject: n%d\r\n\r\ny\r\n" % step))
            elif kind < 0.8:
                gone = writer.expunge(box)
                uids[box] = [u for u in live if u not in gone]
            elif live:
                writer.clear_recent(box, live)
            # Reading with the cache first (it may keep what it reads), then the reference.
            top = max(store.changes_since(b, 0).highestmodseq for b in boxes)
            ours = _answers(store, boxes, top - 3)
            fresh = SQLiteStore(path)
            try:
                assert ours == _answers(fresh, boxes, top - 3), step
            finally:
                fresh.close()
    finally:
        other.close()
        store.close()


def test_a_store_leaves_its_rows_and_other_mailboxes_need_no_read(tmp_path: Path) -> None:
    """After a STORE, the catch-up from the modseq before it is the STORE's own rows
    with one statement (the stamp), and another mailbox's unchanged head is kept."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        store.create_mailbox("alice", "B")
        inbox, other = (store.get_mailbox("alice", n).id for n in ("INBOX", "B"))
        uid = store.append(inbox, b"Subject: x\r\n\r\nbody\r\n")
        store.append(other, b"Subject: y\r\n\r\nbody\r\n")
        before = store.changes_since(inbox, 0).highestmodseq
        quiet_other = store.changes_since(other, 10**6).highestmodseq
        result = store.store_flags(inbox, [uid], "+", ["\\Flagged"])
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        changes = store.changes_since(inbox, before)
        assert changes.changed == result.updated and changes.expunged == []
        assert store.changes_since(other, quiet_other).changed == []
        store.db.set_trace_callback(None)
        assert statements == ["PRAGMA data_version", "PRAGMA data_version"], statements
    finally:
        store.close()


def test_a_deleted_mailbox_is_not_answered_from_its_head(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        store.create_mailbox("alice", "Old")
        box = store.get_mailbox("alice", "Old").id
        top = store.changes_since(box, 0).highestmodseq
        store.delete_mailbox("alice", "Old")
        with pytest.raises(MailboxNotFound):
            store.changes_since(box, top)
    finally:
        store.close()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_the_store_keeps_sqlites_shared_memory_lock_through_writes_and_catch_ups(
    tmp_path: Path,
) -> None:
    """SQLite holds a POSIX read lock on the ``-shm`` file while a connection uses it, and
    POSIX locks belong to the process: closing *any* descriptor of that file drops them
    all. A catch-up that opened the ``-shm`` file to read the WAL-index header (tried in
    session 6 to spare a PRAGMA) dropped that lock, so the next process to open the file
    took it exclusively, started the WAL index over under the server, and the server died
    of SIGBUS mid-import (tests/test_sieve_e2e.py's SIGKILL test). Whatever the catch-up
    path becomes, the lock must still be held after it."""
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    try:
        store.ensure_user("alice")
        box = store.get_mailbox("alice", "INBOX").id
        uid = store.append(box, b"Subject: x\r\n\r\nbody\r\n")
        store.store_flags(box, [uid], "+", ["\\Seen"])
        store.changes_since(box, 0)
        store.changes_since(box, 1)
        inode = (tmp_path / "s.sqlite-shm").stat().st_ino
        held = [
            line
            for line in Path("/proc/locks").read_text().splitlines()
            if f":{inode} " in line and f" {os.getpid()} " in line
        ]
        assert held, "the process no longer holds SQLite's lock on the -shm file"
    finally:
        store.close()
