"""Group commit (gateway/imap/durability.py, issue 19): with SQLite, a command's commit
returns without its fsync, the fsync runs on the syncer's thread while the reactor serves
everyone else, and nothing the writing command says after its commit (its tagged OK
above all) leaves before that fsync has returned; one fsync covers every commit made
before it started; a failed fsync ends the waiting connections without an OK.

With ``flag_fsync = "optimized"`` (the default) a flag-only change is answered and pushed
without that wait and flushed within ``LAZY_SYNC_DELAY``, while message data (APPEND)
still waits; the ``strict`` fixture is ``flag_fsync = "always"``, where STORE waits too."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store.errors import MailboxExists
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite.connection import CHECKPOINT_PASSES
from gateway.testing.imapclient import RawClient, ServerHandle, running_server

HELD = 0.5
"""Seconds a test waits to see that nothing arrives while the fsync is held (a negative
check: long enough for a reply that was not held to come over loopback)."""

RELEASE_WAIT = 10.0
"""Seconds to wait for something that must happen (a safety net, not a timing claim)."""


class HeldSync:
    """Replaces the store's ``sync_commits``: each fsync waits until the test releases it
    (or fails, when told to), and counts."""

    def __init__(self, store: SQLiteStore) -> None:
        self.real = store.sync_commits
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.fail = False
        store.sync_commits = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self.calls += 1
        self.started.set()
        assert self.release.wait(RELEASE_WAIT), "the test never released the fsync"
        if self.fail:
            raise OSError(5, "Input/output error")
        self.real()


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        yield handle


@pytest.fixture
def strict(server: ServerHandle) -> ServerHandle:
    """The server with ``flag_fsync = "always"``: flag changes wait for their fsync."""
    assert server.factory.commit_syncer is not None
    server.factory.commit_syncer.lazy_flags = False
    return server


def client(server: ServerHandle) -> RawClient:
    c = RawClient(server.port)
    c.login()
    assert c.command("S", "SELECT INBOX").endswith(b"S OK [READ-WRITE] SELECT completed\r\n")
    return c


def nothing_arrives(c: RawClient) -> bool:
    c.sock.settimeout(HELD)
    try:
        return not c._fill()
    except TimeoutError:
        return True
    finally:
        c.sock.settimeout(RELEASE_WAIT)


def test_the_tagged_ok_waits_for_the_fsync_while_others_are_served(strict: ServerHandle) -> None:
    assert strict.factory.commit_syncer is not None  # the service's setting
    strict.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    writer, other = client(strict), client(strict)  # (the first SELECT claims \Recent)
    held = HeldSync(strict.store)  # type: ignore[arg-type]
    writer.send(b"W STORE 1 +FLAGS (\\Flagged)\r\n")
    assert held.started.wait(RELEASE_WAIT)
    assert nothing_arrives(writer)  # neither the FETCH response nor the OK
    # The reactor is free: another client's commands (a read of the committed flag
    # included) are answered while the fsync is still held.
    assert other.command("N", "NOOP").endswith(b"N OK NOOP completed\r\n")
    assert b"\\Flagged" in other.command("F", "FETCH 1 FLAGS")
    held.release.set()
    reply = writer.read_until_tagged("W")
    assert reply.startswith(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n")
    assert reply.endswith(b"W OK STORE completed\r\n")


def test_one_fsync_covers_the_commits_made_while_another_ran(server: ServerHandle) -> None:
    held = HeldSync(server.store)  # type: ignore[arg-type]
    first, second, third = client(server), client(server), client(server)
    first.send(b"A APPEND INBOX {11+}\r\nSubject: 1\r\n\r\n")
    assert held.started.wait(RELEASE_WAIT)  # the first fsync runs (held)
    second.send(b"B APPEND INBOX {11+}\r\nSubject: 2\r\n\r\n")
    third.send(b"C APPEND INBOX {11+}\r\nSubject: 3\r\n\r\n")
    assert nothing_arrives(third)  # both committed; their OKs wait for the next fsync
    assert held.calls == 1
    held.release.set()
    for c, tag in ((first, "A"), (second, "B"), (third, "C")):
        assert b"%s OK [APPENDUID " % tag.encode() in c.read_until_tagged(tag)
    assert held.calls == 2  # one fsync for the two commits made during the first
    assert server.factory.commit_syncer is not None
    assert server.factory.commit_syncer.syncs == 2


def test_an_idle_push_waits_for_the_fsync(server: ServerHandle) -> None:
    held = HeldSync(server.store)  # type: ignore[arg-type]
    idler, writer = client(server), client(server)
    idler.send(b"I IDLE\r\n")
    assert idler.read_line() == b"+ idling\r\n"
    writer.send(b"A APPEND INBOX {11+}\r\nSubject: 1\r\n\r\n")
    assert held.started.wait(RELEASE_WAIT)
    assert nothing_arrives(idler)
    held.release.set()
    assert idler.read_line() == b"* 1 EXISTS\r\n"
    assert b"A OK" in writer.read_until_tagged("A")


def test_a_failed_fsync_ends_the_waiting_connection_without_an_ok(
    strict: ServerHandle,
) -> None:
    strict.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    writer, other = client(strict), client(strict)
    held = HeldSync(strict.store)  # type: ignore[arg-type]
    held.fail = True
    writer.send(b"W STORE 1 +FLAGS (\\Flagged)\r\n")
    assert held.started.wait(RELEASE_WAIT)
    held.release.set()
    rest = writer.read_to_eof()
    assert rest == b"* BYE [UNAVAILABLE] Internal error, please reconnect\r\n"
    assert b"W OK" not in rest
    # Others go on (a later write gets its own fsync, which works again).
    held.fail = False
    assert other.command("X", "STORE 1 -FLAGS (\\Flagged)").endswith(b"X OK STORE completed\r\n")


def test_a_client_gone_while_its_fsync_runs_changes_nothing_for_others(
    strict: ServerHandle,
) -> None:
    strict.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    writer, other = client(strict), client(strict)  # (the first SELECT claims \Recent)
    held = HeldSync(strict.store)  # type: ignore[arg-type]
    writer.send(b"W STORE 1 +FLAGS (\\Seen)\r\n")
    assert held.started.wait(RELEASE_WAIT)
    writer.sock.shutdown(socket.SHUT_RDWR)
    writer.sock.close()
    held.release.set()
    assert b"\\Seen" in other.command("F", "FETCH 1 FLAGS")


def test_deferred_commits_skip_the_fsync_and_the_rest_stay_full(tmp_path: Path) -> None:
    """Inside ``deferred_sync`` a commit runs with ``synchronous=NORMAL`` (no fsync) and
    counts in ``commit_seq``; the connection is back at FULL after it, so every other
    write (the fetcher's ledger, the CLI) stays durable when it returns."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        with store.deferred_sync():
            store.create_mailbox("alice", "A")
        assert store.commit_seq == 1
        assert statements[0] == "PRAGMA synchronous = NORMAL"
        assert statements[-1] == "PRAGMA synchronous = FULL"
        statements.clear()
        store.create_mailbox("alice", "B")
        assert store.commit_seq == 1
        assert not any("synchronous" in s for s in statements)
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with pytest.raises(MailboxExists), store.deferred_sync():
            store.create_mailbox("alice", "A")  # exists: the write fails
        assert store.commit_seq == 1
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        store.sync_commits()  # the WAL file exists and can be flushed from here
    finally:
        store.close()
    # Everything committed is in the file for the next opener.
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    names = {n for (n,) in conn.execute("SELECT name FROM mailbox")}
    conn.close()
    assert {"A", "B"} <= names


def wait_flushed(server: ServerHandle) -> None:
    """Until an fsync has covered every flag-only commit made so far."""
    syncer = server.factory.commit_syncer
    assert syncer is not None
    deadline = time.monotonic() + RELEASE_WAIT
    while syncer.lazy_synced < server.store.lazy_seq:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the flag-only commits were never flushed"
        time.sleep(0.01)


def test_a_flag_change_is_answered_before_its_fsync_and_flushed_soon(
    server: ServerHandle,
) -> None:
    """flag_fsync = "optimized" (the default): STORE's OK does not wait for the disk, as
    in Dovecot, but an fsync covering it starts within LAZY_SYNC_DELAY all the same."""
    server.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    writer = client(server)
    held = HeldSync(server.store)  # type: ignore[arg-type]
    lazy = server.store.lazy_seq  # type: ignore[attr-defined]
    reply = writer.command("W", "STORE 1 +FLAGS (\\Flagged)")  # while no fsync can end
    assert reply.startswith(b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n")
    assert reply.endswith(b"W OK STORE completed\r\n")
    assert server.store.lazy_seq == lazy + 1  # type: ignore[attr-defined]
    assert held.started.wait(RELEASE_WAIT)  # the flush comes by itself
    held.release.set()
    wait_flushed(server)


def test_an_append_after_a_flag_change_still_waits_for_the_fsync(server: ServerHandle) -> None:
    """Message data never takes the lazy path: APPEND's OK waits for an fsync that
    covers it (and with it the flag change before it, the WAL being one file)."""
    server.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    writer = client(server)
    held = HeldSync(server.store)  # type: ignore[arg-type]
    assert writer.command("W", "STORE 1 +FLAGS (\\Seen)").endswith(b"W OK STORE completed\r\n")
    writer.send(b"A APPEND INBOX {11+}\r\nSubject: 2\r\n\r\n")
    assert held.started.wait(RELEASE_WAIT)
    assert nothing_arrives(writer)
    held.release.set()
    assert b"A OK [APPENDUID " in writer.read_until_tagged("A")
    syncer = server.factory.commit_syncer
    assert syncer is not None and syncer.synced == server.store.commit_seq  # type: ignore[attr-defined]
    wait_flushed(server)


def test_an_idle_push_of_a_flag_change_does_not_wait_for_the_fsync(
    server: ServerHandle,
) -> None:
    server.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
    idler, writer = client(server), client(server)
    idler.send(b"I IDLE\r\n")
    assert idler.read_line() == b"+ idling\r\n"
    held = HeldSync(server.store)  # type: ignore[arg-type]
    assert writer.command("W", "STORE 1 +FLAGS (\\Flagged)").endswith(b"W OK STORE completed\r\n")
    assert b"\\Flagged" in idler.read_line()  # the fsync is still held
    held.release.set()
    wait_flushed(server)


def test_flag_only_commits_are_lazy_only_when_asked(tmp_path: Path) -> None:
    """Inside ``deferred_sync(lazy_flags=True)`` STORE and the \\Recent claim count in
    ``lazy_seq``, APPEND in ``commit_seq``; without ``lazy_flags`` STORE counts in
    ``commit_seq`` as before, and outside any block nothing is counted (FULL)."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.ensure_user("alice")
        box = store.get_mailbox("alice", "INBOX")
        uid = store.append(box.id, b"Subject: one\r\n\r\nbody\r\n")
        with store.deferred_sync(lazy_flags=True):
            store.store_flags(box.id, [uid], "+", ["\\Seen"])
            store.clear_recent(box.id, [uid])
            assert (store.commit_seq, store.lazy_seq) == (0, 2)
            store.append(box.id, b"Subject: two\r\n\r\nbody\r\n")
            assert (store.commit_seq, store.lazy_seq) == (1, 2)
        with store.deferred_sync():
            store.store_flags(box.id, [uid], "-", ["\\Seen"])
        assert (store.commit_seq, store.lazy_seq) == (2, 2)
        store.store_flags(box.id, [uid], "+", ["\\Flagged"])
        assert (store.commit_seq, store.lazy_seq) == (2, 2)
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def _file_pages(path: Path) -> int:
    """The page count in the database file's own header (bytes 28-31): what checkpoints
    have copied back from the WAL so far."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(32)[28:32], "big")


def test_with_auto_checkpoint_off_only_checkpoint_copies_the_wal_back(tmp_path: Path) -> None:
    """``auto_checkpoint(False)`` (the syncer's start) stops commits, deferred or not,
    from checkpointing (a copy and two fsyncs inside the commit, on the reactor); deferred
    writes set no checkpoint PRAGMA of their own; ``checkpoint()`` copies the WAL back on
    a connection of its own, and ``auto_checkpoint(True)`` restores SQLite's default."""
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    try:
        store.ensure_user("alice")
        box = store.get_mailbox("alice", "INBOX")
        store.auto_checkpoint(False)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        before = _file_pages(path)
        with store.deferred_sync():
            for n in range(10):
                store.append(box.id, b"Subject: %d\r\n\r\n" % n + b"x" * 50_000 + b"\r\n")
        for n in range(10):  # 1,000+ pages in the WAL in all: no commit checkpointed
            store.append(box.id, b"Subject: %d\r\n\r\n" % n + b"y" * 50_000 + b"\r\n")
        store.db.set_trace_callback(None)
        assert not any("wal_autocheckpoint" in s for s in statements)
        assert _file_pages(path) == before
        store.sync_commits()  # an fsync only
        assert _file_pages(path) == before
        store.checkpoint()
        assert _file_pages(path) > before + 200  # 1 MB of messages went back into the file
        store.auto_checkpoint(True)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        store.close()


class HeldCheckpoint:
    """Replaces the store's ``checkpoint``: each waits until the test releases it, and
    records the thread it ran on."""

    def __init__(self, store: SQLiteStore) -> None:
        self.real = store.checkpoint
        self.release = threading.Event()
        self.started = threading.Event()
        self.threads: list[int] = []
        store.checkpoint = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self.threads.append(threading.get_ident())
        self.started.set()
        assert self.release.wait(RELEASE_WAIT), "the test never released the checkpoint"
        self.real()


def test_an_append_is_answered_while_a_checkpoint_runs(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The syncer checkpoints on a thread of its own: a commit's fsync never queues
    behind a checkpoint (it used to run after an fsync on the syncer's thread), and the
    checkpoint runs neither on the reactor nor on the syncer's thread."""
    syncer = server.factory.commit_syncer
    assert syncer is not None
    pages = server.call(lambda: server.store.db.execute("PRAGMA wal_autocheckpoint").fetchone())  # type: ignore[attr-defined]
    assert pages[0] == 0  # the syncer's start turned the commits' own checkpoints off
    held = HeldCheckpoint(server.store)  # type: ignore[arg-type]
    fsync_threads: list[int] = []
    real_sync = server.store.sync_commits  # type: ignore[attr-defined]

    def sync() -> None:
        fsync_threads.append(threading.get_ident())
        real_sync()

    monkeypatch.setattr(server.store, "sync_commits", sync)
    assert held.started.wait(RELEASE_WAIT)  # the checkpoint came by itself, and is held
    done = syncer.checkpoints  # (an earlier one may have run before the hold was in place)
    writer = client(server)
    reply = writer.command("A", "APPEND INBOX {11+}\r\nSubject: 1\r\n")
    assert b"A OK [APPENDUID " in reply  # while the checkpoint is still held
    assert syncer.synced == server.store.commit_seq  # type: ignore[attr-defined]
    assert syncer.checkpoints == done
    held.release.set()
    deadline = time.monotonic() + RELEASE_WAIT
    while syncer.checkpoints == done:
        assert time.monotonic() < deadline, "the checkpoint never finished"
        time.sleep(0.01)
    reactor_thread = server.call(threading.get_ident)
    assert held.threads[0] not in fsync_threads
    assert reactor_thread not in held.threads and reactor_thread not in fsync_threads


class ScriptedCheckpoints:
    """Stands in for ``checkpoint()``'s own connection: answers each
    ``PRAGMA wal_checkpoint(PASSIVE)`` with the next (busy, WAL frames, frames copied)."""

    def __init__(self, answers: list[tuple[int, int, int]]) -> None:
        self.answers = answers
        self.passes = 0

    def execute(self, sql: str) -> ScriptedCheckpoints:
        assert sql == "PRAGMA wal_checkpoint(PASSIVE)"
        self.passes += 1
        return self

    def fetchone(self) -> tuple[int, int, int]:
        return self.answers[min(self.passes, len(self.answers)) - 1]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("answers", "passes"),
    [
        ([(0, 900, 700)], 1),  # a reader needs the rest: the next checkpoint tries again
        ([(0, 900, 900), (0, 900, 900)], 2),  # no commit since: the next one starts over
        ([(0, 900, 900), (0, 930, 930), (0, 930, 930)], 3),  # one raced with the first pass
        ([(0, 900, 900), (0, 12, 12)], 2),  # the WAL started over meanwhile
        ([(0, 900 + n, 900 + n) for n in range(10)], CHECKPOINT_PASSES),  # never caught up
    ],
)
def test_a_checkpoint_passes_again_until_no_commit_raced_with_it(
    tmp_path: Path, answers: list[tuple[int, int, int]], passes: int
) -> None:
    """The WAL starts over only when a write begins with every frame copied back, so a
    checkpoint that raced with commits copies again (at most CHECKPOINT_PASSES times)."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        scripted = ScriptedCheckpoints(answers)
        store._checkpointer = scripted  # type: ignore[assignment]
        store.checkpoint()
        assert scripted.passes == passes
    finally:
        store.close()


def test_after_a_checkpoint_the_next_write_starts_the_wal_over(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    try:
        store.ensure_user("alice")
        box = store.get_mailbox("alice", "INBOX")
        store.auto_checkpoint(False)
        for n in range(10):
            store.append(box.id, b"Subject: %d\r\n\r\n" % n + b"x" * 50_000 + b"\r\n")
        store.checkpoint()
        store.append(box.id, b"Subject: small\r\n\r\nbody\r\n")
        other = sqlite3.connect(path)
        try:
            _busy, frames, _done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            other.close()
        assert frames < 100  # the small write's frames only: the WAL started over
    finally:
        store.close()
