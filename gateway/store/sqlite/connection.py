"""The SQLite store's connection: opening and migrating the file, transactions, listeners.

One connection per store, in WAL mode with ``synchronous=FULL``: every write is one
``BEGIN IMMEDIATE`` transaction (:meth:`SQLiteConnection._write`), durable when it
returns; reads that need several SELECTs take one snapshot (:meth:`SQLiteConnection._read`).
Listeners hear about a change only after its commit, never from inside a transaction.
The concern modules (rows, mailboxes, messages, ledger) build on this class.

Group commit (:class:`~gateway.store.interfaces.DeferredSync`): inside
:meth:`SQLiteConnection.deferred_sync` a write commits with ``synchronous=NORMAL``: its
WAL frames are written to the file (the OS holds them) but not fsynced, so the commit
returns in microseconds instead of a disk flush. :meth:`SQLiteConnection.sync_commits`,
on another thread, fsyncs the WAL file: every frame written before it, and so every
commit made before it started, is then on disk, which is what ``synchronous=FULL`` would
have done inside each commit. NORMAL keeps the database consistent across a power loss
(SQLite syncs the WAL before each checkpoint), so a crash before the fsync loses only
those last commits, whose writers have not been answered yet.

``deferred_sync(lazy_flags=True)`` also sorts the block's commits into two classes:
a write that changes only flags (STORE, the implicit \\Seen of a FETCH, the \\Recent
claim of SELECT; :meth:`SQLiteConnection._flags_only`) counts in
:attr:`~SQLiteConnection.lazy_seq` instead of :attr:`~SQLiteConnection.commit_seq`, so its
writer need not wait for the fsync (Dovecot's ``mail_fsync = optimized`` does not fsync
its index either; the IMAP side flushes such commits soon after, see
:mod:`gateway.imap.durability`). Message data (APPEND, COPY/MOVE, EXPUNGE, mailbox
changes) always counts in ``commit_seq``, and each fsync covers both classes: the WAL
is one file, written in commit order.

Checkpoints: SQLite copies the WAL back into the database file (and fsyncs both) from
inside the commit that takes the WAL past 1,000 pages, on whatever thread commits. In
the server that was the reactor, where each checkpoint stalled every client for its
fsyncs (issue 19: in a 15 s run of the 50-client mix, 18 checkpoints, 64 fsyncs on the
reactor thread, 151 ms in all and up to 34 ms each at load ~10; strace). So while the
IMAP server's :class:`~gateway.imap.durability.CommitSyncer` runs, it turns the automatic
checkpoint off (:meth:`SQLiteConnection.auto_checkpoint`, one PRAGMA when it starts, not
two per write) and runs :meth:`SQLiteConnection.checkpoint` (PASSIVE, on a connection of
its own) on a thread of its own about once a second: neither on the reactor, nor on the
syncer's thread, where a commit's fsync used to queue behind the checkpoint's two (up to
100 ms at load ~4; strace, bench/README.md "APPEND's tail, session 4"). PASSIVE waits
for no reader or writer; the next writer starts the WAL over once everything was copied.
Without the syncer (the CLI, tests) SQLite's automatic checkpoint runs as before.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Self

import structlog

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.message.analysis import Analysis, analyze
from gateway.store.errors import StoreError
from gateway.store.interfaces import ChangeListener
from gateway.store.rowdata import RowValues
from gateway.store.schema import migrate, schema_version
from gateway.store.sqlite.quiet import QuietHeads
from gateway.store.sqlite_textindex import (
    BACKFILL_BATCH,
    INDEX_BATCH,
    backlog_done,
    index_backlog,
    index_backlog_step,
)

log = structlog.get_logger("gateway.store.sqlite")

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock before failing."""

MMAP_SIZE = 256 * 1024 * 1024
"""Bytes of the database file SQLite reads through a memory map instead of ``read()``
(``PRAGMA mmap_size``): a message body then comes straight from the OS page cache
with one copy fewer (UID FETCH of 33 MB: ~18 ms -> ~12 ms of store time). The mapped
pages are the kernel's page cache, shared and reclaimable, though they count in the
process's RSS while mapped; beyond this size SQLite reads as before.

Writes that ingest mail run with the map off (:meth:`SQLiteConnection._unmapped`): an
insert reads b-tree and full-text index pages all over the file (index pages of random
keys, FTS5 segment merges), and through the map each page read stays in RSS until the
map goes, so a first import of 15,000 small messages held ~120 MiB of the file in RSS
and a 100,000-message one would have held the whole 256 MiB (issue 19)."""


CHECKPOINT_PASSES = 4
"""PASSIVE passes one :meth:`SQLiteConnection.checkpoint` may make. The WAL starts over
only when a write begins with every frame already copied back; under steady writes a
pass that copies a second's worth ends after newer commits, so with one pass the WAL
seldom started over and grew (35-57 MB in a 15 s run of the 50-client mix, where
SQLite's own checkpoint keeps it near 4 MB). Each further pass copies only what the one
before raced with and usually ends before the next commit; a pass that finds no new
commit costs one statement and no fsync."""

AUTOCHECKPOINT_PAGES = 1000
"""SQLite's default ``wal_autocheckpoint``, restored by ``auto_checkpoint(True)``."""


class SQLiteConnection(RowValues):
    """One SQLite file, open and migrated: the base of :class:`~gateway.store.sqlite.SQLiteStore`.

    Used from one thread at a time; it holds one connection. ``clock`` gives the
    current time (epoch seconds) for default INTERNALDATEs, ledger timestamps and the
    UIDVALIDITY sequence; ``analyze`` computes a message's IMAP facts at ingest.
    ``check_same_thread=False`` lets a one-thread runner make the calls from a pool
    thread (tests of the threaded path); the store still serves one call at a time.
    """

    runs_inline = True
    """SQLite answers in microseconds: callers use it on the reactor thread
    (see "Store calls and the reactor" in :mod:`gateway.store.interfaces`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
        analyze: Callable[[bytes], Analysis] = analyze,
        check_same_thread: bool = True,
    ) -> None:
        self.path = Path(path)
        self.max_message_size = max_message_size
        self._clock = clock
        self._analyze = analyze
        self._listeners: list[ChangeListener] = []
        self._flag_cache: dict[tuple[str, int], frozenset[str]] = {}
        self._shared_ids: dict[int, bool] = {}  # mailbox id → owner is shared (ids never reused)
        self._zones: dict[int, datetime.timezone] = {}
        self._provisioned: set[str] = set()  # users whose INBOX exists (ensure_user)
        self._quiet = QuietHeads()
        """Mailboxes' HIGHESTMODSEQ as of a :meth:`_change_stamp`, carried over this
        connection's own writes: a catch-up finds an unchanged mailbox without a read
        transaction (issue 19, :mod:`gateway.store.sqlite.quiet`)."""
        self._text_waiting = 0
        """Messages this connection inserted since it last indexed the full-text
        backlog (:data:`~gateway.store.sqlite_textindex.INDEX_BATCH`); an estimate that
        only decides when to index (a rolled-back insert counts too, harmlessly)."""
        self._deferring = 0  # depth of deferred_sync blocks
        self._lazy_flags = False  # the outer deferred_sync block's lazy_flags
        self._flag_write = False  # inside _flags_only: the write changes flags only
        self.commit_seq = 0
        """Commits made inside :meth:`deferred_sync` so far (not yet known to be on disk
        until a :meth:`sync_commits` started after them has returned)."""
        self.lazy_seq = 0
        """Flag-only commits made inside ``deferred_sync(lazy_flags=True)`` so far: not
        in :attr:`commit_seq`, on disk with the next :meth:`sync_commits` all the same."""
        self._checkpointer: sqlite3.Connection | None = None  # checkpoint()'s own
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=check_same_thread
        )
        try:
            self._configure()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> Self:
        """Open (creating and migrating if needed) the store at ``path``."""
        return cls(path, max_message_size=max_message_size, clock=clock)

    def _configure(self) -> None:
        conn = self.db
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA mmap_size = {int(MMAP_SIZE)}")
        ran = migrate(conn)
        # Seed the UIDVALIDITY sequence from the clock once, when the store is created.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('uidvalidity', ?)",
            (max(1, int(self._clock())),),
        )
        log.info(
            "store.opened",
            path=str(self.path),
            journal_mode=mode,
            schema_version=schema_version(conn),
            migrations_run=ran,
        )
        self._index_text_backlog()

    def _index_text_backlog(self) -> None:
        """Index the messages stored before the full-text index existed (the upgrade
        to it lists them as backlog; searches are exact meanwhile, they scan those).

        Done when the store opens, before it serves anyone, in batches of
        :data:`~gateway.store.sqlite_textindex.BACKFILL_BATCH` messages, each its own
        write transaction: other processes on the file wait for one batch at most, and an
        interrupted start resumes where it stopped. A fresh store has no backlog; one of
        100,000 small messages takes about 80 s here, once. New messages of a batch not
        yet complete when the store was last closed are indexed here too, without a log
        line (under :data:`~gateway.store.sqlite_textindex.INDEX_BATCH`, ~4 ms).
        """
        if backlog_done(self.db):
            return
        if self.index_text_step(INDEX_BATCH):
            return  # what the last run left of a batch
        started = time.monotonic()
        log.info("store.text_index_backfill_started", path=str(self.path))
        while not self.index_text_step():
            pass
        log.info(
            "store.text_index_backfill_done",
            path=str(self.path),
            seconds=round(time.monotonic() - started, 1),
        )

    def index_text_step(self, batch: int = BACKFILL_BATCH) -> bool:
        """Index one batch of the full-text backlog; True once none is left."""
        with self._write():
            return index_backlog_step(self.db, batch)

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is closed")
        return self._conn

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions and notification -------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[set[int]]:
        """One ``BEGIN IMMEDIATE`` transaction; yields the set of changed mailbox ids,
        whose listeners are called once the commit has succeeded."""
        conn = self.db
        if conn.in_transaction:
            raise RuntimeError("store write started inside another transaction")
        changed: set[int] = set()
        deferred = self._deferring > 0
        if deferred:
            # The fsync is sync_commits', off this thread.
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            quiet = self._quiet
            quiet.write_started(self._change_stamp() if quiet.stamp is not None else None)
            try:
                yield changed
                waiting = self._text_waiting
                if waiting >= INDEX_BATCH:
                    # The write that lists the batch's last message indexes the batch,
                    # atomically with it (sqlite_textindex: batched indexing).
                    index_backlog(conn, waiting)
                conn.execute("COMMIT")
                if waiting >= INDEX_BATCH:
                    self._text_waiting = 0
            except BaseException:
                quiet.rolled_back()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            quiet.committed(conn.total_changes)
        finally:
            if deferred:
                conn.execute("PRAGMA synchronous = FULL")
        if deferred:
            if self._flag_write and self._lazy_flags:
                self.lazy_seq += 1
            else:
                self.commit_seq += 1
        self._notify(changed)

    def deferred_sync(self, *, lazy_flags: bool = False) -> AbstractContextManager[None]:
        """Writes in this block commit without waiting for the disk (module docstring):
        the caller must see a :meth:`sync_commits` started after them return before it
        tells anyone outside the process that they are done. With ``lazy_flags``,
        flag-only commits count in :attr:`lazy_seq` instead: the caller answers them
        without that wait. (A plain class, not a generator: the IMAP server enters one
        around every step of every command, issue 19.)"""
        return _DeferredBlock(self, lazy_flags)

    @contextmanager
    def _flags_only(self) -> Iterator[None]:
        """Mark the write inside as one that changes flags only (\\Seen, \\Recent,
        keywords; no message, no mailbox): a lazy commit in a
        ``deferred_sync(lazy_flags=True)`` block, an ordinary one anywhere else."""
        before = self._flag_write
        self._flag_write = True
        try:
            yield
        finally:
            self._flag_write = before

    def sync_commits(self) -> None:
        """Make every commit made so far durable: ``fdatasync`` the WAL file (what
        ``synchronous=FULL`` does inside each commit in WAL mode; on Linux a sync of any
        descriptor flushes the file's data, and fdatasync also flushes a size change).
        Nothing else: the checkpoint is :meth:`checkpoint`'s, on another thread, so a
        commit's fsync never waits behind one. Touches no state of this connection's, so
        it may run on another thread while this connection goes on serving; one thread
        at a time."""
        if str(self.path) in ("", ":memory:"):
            return  # nothing on disk
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:  # no WAL (nothing written since it was checkpointed away)
            fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def auto_checkpoint(self, on: bool) -> None:
        """Whether this connection's commits checkpoint the WAL themselves (SQLite's
        ``wal_autocheckpoint``, on by default): off while a thread runs :meth:`checkpoint`
        instead (module docstring). Call it on the thread that uses the store."""
        pages = AUTOCHECKPOINT_PAGES if on else 0
        self.db.execute(f"PRAGMA wal_autocheckpoint = {pages}")

    def checkpoint(self) -> None:
        """A PASSIVE checkpoint on a connection of its own: copies what no reader still
        needs, waits for nobody, fsyncs the WAL and the database file when it copied
        something. A failure is logged, never raised (the commits are durable in the WAL
        either way, and the next one tries again). May run on another thread while this
        connection goes on serving (and while :meth:`sync_commits` runs on a third);
        one thread at a time."""
        if str(self.path) in ("", ":memory:"):
            return
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False
                )
                self._checkpointer.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            seen = -1
            for _ in range(CHECKPOINT_PASSES):
                _busy, frames, done = self._checkpointer.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                if done < frames or frames <= seen:
                    # A reader still needs frames (the next checkpoint tries again), or
                    # no commit came since the last pass: the next one starts the WAL over.
                    break
                seen = frames
        except sqlite3.Error as e:
            log.warning("store.checkpoint_failed", path=str(self.path), error=str(e))

    def _change_stamp(self) -> tuple[int, int]:
        """Equal on two calls only if nothing was written to the file in between: rows this
        connection changed (``total_changes``, triggers included, an attribute read) and
        commits by any other connection (``PRAGMA data_version``, SQLite's own cheap
        check: one statement, no transaction, no page read). One process owns the file,
        but a CLI command run beside the server would be seen as well."""
        conn = self.db
        return conn.total_changes, conn.execute("PRAGMA data_version").fetchone()[0]

    @contextmanager
    def _unmapped(self) -> Iterator[None]:
        """Run a bulk ingest write without the memory map (see :data:`MMAP_SIZE`): its
        page reads go through SQLite's bounded page cache instead, and setting the size
        back drops the old mapping, so what a batch read is not kept in RSS either. Reads
        afterwards map pages again as they touch them."""
        conn = self.db
        conn.execute("PRAGMA mmap_size = 0")
        try:
            yield
        finally:
            if self._conn is not None:
                conn.execute(f"PRAGMA mmap_size = {int(MMAP_SIZE)}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several SELECTs see one snapshot."""
        conn = self.db
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _notify(self, mailbox_ids: set[int]) -> None:
        for mailbox_id in sorted(mailbox_ids):
            for listener in list(self._listeners):
                try:
                    listener(mailbox_id)
                except Exception:
                    log.exception("store.listener_failed", mailbox_id=mailbox_id)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA optimize")
            finally:
                self._conn.close()
                self._conn = None


class _DeferredBlock:
    """One :meth:`SQLiteConnection.deferred_sync` block (nested blocks keep the outer
    one's ``lazy_flags``)."""

    __slots__ = ("_store", "_lazy", "_outer")

    def __init__(self, store: SQLiteConnection, lazy_flags: bool) -> None:
        self._store = store
        self._lazy = lazy_flags
        self._outer = False

    def __enter__(self) -> None:
        store = self._store
        self._outer = store._deferring == 0
        if self._outer:
            store._lazy_flags = self._lazy
        store._deferring += 1

    def __exit__(self, *exc: object) -> None:
        store = self._store
        store._deferring -= 1
        if self._outer:
            store._lazy_flags = False
