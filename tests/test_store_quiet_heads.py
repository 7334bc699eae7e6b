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
from gateway.store.interfaces import Changes
from gateway.store.records import NewMessage
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
    """STORE (changing and not), APPEND (with and without its own \\Recent claim), COPY
    and MOVE (also within one mailbox), EXPUNGE, the \\Recent claim, and commits by
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
        for step in range(200):
            box = rng.choice(boxes)
            kind = rng.random()
            live = uids[box]
            writer = other if kind < 0.1 else store
            if kind < 0.6 and live:
                picked = rng.sample(live, rng.randint(1, min(3, len(live))))
                writer.store_flags(
                    box, picked, rng.choice("+-"), [rng.choice(["\\Seen", "\\Deleted", "$A"])]
                )
            elif kind < 0.64:
                live.append(writer.append(box, b"Subject: n%d\r\n\r\ny\r\n" % step))
            elif kind < 0.67:
                # The appending session's own \Recent claim, in the APPEND's transaction.
                raw = b"Subject: c%d\r\n\r\ny\r\n" % step
                live += writer.append_many(box, [NewMessage(raw)], claim_recent=True)
            elif kind < 0.73 and live:
                # COPY or MOVE, into another mailbox or the same one (a MOVE within one
                # mailbox adds rows and then expunges: two bumps in one transaction).
                dst = rng.choice(boxes)
                picked = rng.sample(live, rng.randint(1, min(2, len(live))))
                moved = rng.random() < 0.5
                pairs = writer.copy(box, picked, dst, move=moved)
                if moved:
                    uids[box] = [u for u in uids[box] if u not in picked]
                uids[dst] = uids[dst] + [new for _old, new in pairs]
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


def test_an_append_leaves_its_rows_as_the_next_catch_up(tmp_path: Path) -> None:
    """After an APPEND (issue 19, session 7), the catch-up from the modseq before it is
    the new rows, as stored (\\Recent or not), with one statement (the stamp): the
    appending session's own, its siblings', the IDLE fan-out's."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        inbox = store.get_mailbox("alice", "INBOX").id
        store.append(inbox, b"Subject: x\r\n\r\nbody\r\n")
        for claim in (False, True):
            before = store.changes_since(inbox, 0).highestmodseq
            new = [NewMessage(b"Subject: %d\r\n\r\nbody\r\n" % i, ("$A",)) for i in range(2)]
            uids = store.append_many(inbox, new, claim_recent=claim)
            statements: list[str] = []
            store.db.set_trace_callback(statements.append)
            changes = store.changes_since(inbox, before)
            store.db.set_trace_callback(None)
            assert statements == ["PRAGMA data_version"], statements
            assert changes.expunged == [] and changes.highestmodseq == before + 1
            assert [row.uid for row in changes.changed] == uids
            assert all(row.modseq == before + 1 for row in changes.changed)
            shown = {"$A"} if claim else {"$A", "\\Recent"}
            assert all(row.flags == frozenset(shown) for row in changes.changed), changes
            assert _read_afresh(tmp_path / "s.sqlite", inbox, before) == changes
    finally:
        store.close()


def _read_afresh(path: Path, mailbox_id: int, since: int) -> Changes:
    """What a connection of its own reads from the file: the answer a kept one must match."""
    fresh = SQLiteStore(path)
    try:
        return fresh.changes_since(mailbox_id, since)
    finally:
        fresh.close()


def test_a_move_within_one_mailbox_is_read_again(tmp_path: Path) -> None:
    """A MOVE into its own mailbox adds rows (one bump) and then expunges the originals
    (a second bump): the added rows are not all that changed, so they are no answer."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        inbox = store.get_mailbox("alice", "INBOX").id
        uids = [store.append(inbox, b"Subject: %d\r\n\r\nbody\r\n" % i) for i in range(3)]
        before = store.changes_since(inbox, 0).highestmodseq
        store.copy(inbox, uids[:1], inbox, move=True)
        changes = store.changes_since(inbox, before)
        assert changes.expunged == uids[:1] and changes.highestmodseq == before + 2
        assert _read_afresh(tmp_path / "s.sqlite", inbox, before) == changes
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
