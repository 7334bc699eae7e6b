"""Backups and restores of the store: `popgate backup DEST` and `popgate restore SRC`.

A backup is a consistent copy of the one SQLite file that holds all of popgate's state
(mail, flags, the UIDL ledger), made with SQLite's online backup API while the gateway
runs and keeps importing:

* the source is opened read-only in this (CLI) process; a read transaction is held for
  the whole copy, so in WAL mode every step reads the same snapshot: the copy is exactly
  the store as it was at one commit, and the gateway's writers are never blocked;
* pages are copied :data:`PAGES_PER_STEP` at a time into ``DEST.partial``, which is
  switched out of WAL mode (one self-contained file), checked with
  ``PRAGMA integrity_check``, fsynced and only then renamed to ``DEST``: a ``DEST`` that
  exists is always complete.

A restore replaces the store with a backup while the gateway is stopped (the CLI
checks the control socket first). The backup is checked and copied into the state
directory first; the current store (and its ``-wal``/``-shm``) is renamed to
``popgate.sqlite3.pre-restore-TIMESTAMP`` rather than deleted, so a restore can itself
be undone by renaming back.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.store.schema import SCHEMA_VERSION

PAGES_PER_STEP = 1024
"""Pages copied per backup step (4 MiB with 4 KiB pages) between progress reports."""

BUSY_TIMEOUT_MS = 10_000
"""How long opening the source waits for a lock held by the gateway (a checkpoint)."""

FILE_MODE = 0o600
"""Backups hold everyone's mail: readable by the owner only."""

REQUIRED_TABLES = frozenset({"mailbox", "message", "mailbox_message", "ledger", "meta"})
"""Tables a file must have to be accepted as a popgate store by restore."""

SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's companion files of a database; they belong to one database file only."""

Progress = Callable[[int, int], None]
"""``progress(pages_done, pages_total)`` after each backup step."""


class BackupError(Exception):
    """A backup or restore that could not be done; the text says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    pages: int
    mailboxes: int
    messages: int


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    previous: Path | None
    mailboxes: int
    messages: int


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def default_name() -> str:
    """File name used when DEST is a directory."""
    return f"popgate-{_timestamp()}.sqlite3"


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise BackupError(f"{path}: no such store file (is state_dir right?)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise BackupError(f"{path}: cannot open the store read-only: {e}") from None
    return conn


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_with_side_files(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        p.unlink(missing_ok=True)


def check_store(conn: sqlite3.Connection, where: str) -> tuple[int, int]:
    """Raise :class:`BackupError` unless ``conn`` is an intact popgate store this version
    can open; return its (mailbox count, message count)."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = REQUIRED_TABLES - tables
        if missing:
            raise BackupError(
                f"{where}: not a popgate store (missing tables: {', '.join(sorted(missing))})"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise BackupError(
                f"{where}: made by a newer popgate (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade popgate first"
            )
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"{where}: integrity check failed: {'; '.join(problems[:5])}")
        mailboxes = conn.execute("SELECT count(*) FROM mailbox").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM mailbox_message").fetchone()[0]
    except sqlite3.Error as e:
        raise BackupError(f"{where}: cannot read: {e}") from None
    return mailboxes, messages


def _copy(src: sqlite3.Connection, partial: Path, pages: int, progress: Progress | None) -> int:
    """Copy ``src`` into ``partial`` in steps, inside one read transaction on ``src``."""
    _remove_with_side_files(partial)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    dst = sqlite3.connect(partial, isolation_level=None)
    total = 0
    try:

        def step(_status: int, remaining: int, count: int) -> None:
            nonlocal total
            total = count
            if progress is not None:
                progress(count - remaining, count)

        # One snapshot for the whole copy: without it, each commit the gateway makes
        # between two steps would restart the backup from page one (SQLite backup API).
        src.execute("BEGIN")
        try:
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            src.backup(dst, pages=pages, progress=step)
        finally:
            src.execute("COMMIT")
        # The copy inherits WAL mode from the header; make it one self-contained file.
        dst.execute("PRAGMA journal_mode = DELETE").fetchone()
    finally:
        dst.close()
    return total


def backup(
    store_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    pages: int = PAGES_PER_STEP,
    progress: Progress | None = None,
) -> BackupResult:
    """Copy the store at ``store_path`` to ``dest`` (a new file, or a directory to put a
    timestamped file in). Safe while the gateway runs. Refuses to overwrite. A ``dest``
    written as a directory (ending in ``/``) must be one: ``Path`` would drop the slash
    and the backup would become a file of that name."""
    store = Path(store_path)
    target = Path(dest)
    if os.fspath(dest).endswith(("/", os.sep)) and not target.is_dir():
        raise BackupError(f"{os.fspath(dest)}: no such directory")
    if target.is_dir():
        target = target / default_name()
    if target.exists():
        raise BackupError(f"{target}: already exists; choose a new name (backups never overwrite)")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent}: no such directory")
    partial = target.with_name(target.name + ".partial")
    src = _open_readonly(store)
    try:
        try:
            page_count = _copy(src, partial, pages, progress)
        except sqlite3.Error as e:
            raise BackupError(f"copying {store} failed: {e}") from None
        except OSError as e:
            raise BackupError(f"writing {partial} failed: {e.strerror}") from None
    except BaseException:
        _remove_with_side_files(partial)
        raise
    finally:
        src.close()
    try:
        mailboxes, messages = _check_copy(partial)
        _fsync_file(partial)
        os.replace(partial, target)
        _fsync_dir(target.parent)
    except BaseException:
        _remove_with_side_files(partial)
        raise
    return BackupResult(target, target.stat().st_size, page_count, mailboxes, messages)


def _check_copy(path: Path) -> tuple[int, int]:
    """:func:`check_store` on a copy just written, through a fresh read-only connection to
    the file as it is on disk."""
    check = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return check_store(check, str(path))
    finally:
        check.close()


def restore(
    src_path: str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
) -> RestoreResult:
    """Replace the store at ``store_path`` by the backup ``src_path``.

    The gateway must be stopped (the caller checks). The backup is verified, copied next
    to the store, and swapped in; the old store is kept as ``*.pre-restore-TIMESTAMP``.
    """
    source = Path(src_path)
    store = Path(store_path)
    if not store.parent.is_dir():
        raise BackupError(f"{store.parent}: no such state directory")
    src = _open_readonly(source)
    try:
        check_store(src, str(source))
        incoming = store.with_name(store.name + ".restoring")
        try:
            _copy(src, incoming, PAGES_PER_STEP, progress)
        except (sqlite3.Error, OSError) as e:
            _remove_with_side_files(incoming)
            raise BackupError(f"copying {source} into {store.parent} failed: {e}") from None
    finally:
        src.close()
    try:
        mailboxes, messages = _check_copy(incoming)
        _fsync_file(incoming)
    except BaseException:
        _remove_with_side_files(incoming)
        raise
    previous: Path | None = None
    if store.exists():
        previous = store.with_name(f"{store.name}.pre-restore-{_timestamp()}")
        # The -wal holds commits of the *old* file: it must move with it, never stay
        # beside the restored one (SQLite would replay it into the wrong database).
        for suffix in ("", *SIDE_FILES):
            old = store.with_name(store.name + suffix)
            if old.exists():
                os.replace(old, previous.with_name(previous.name + suffix))
    else:
        for suffix in SIDE_FILES:
            store.with_name(store.name + suffix).unlink(missing_ok=True)
    os.replace(incoming, store)
    _fsync_dir(store.parent)
    return RestoreResult(store, previous, mailboxes, messages)
