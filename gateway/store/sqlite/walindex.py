"""Whether another connection committed to the SQLite file: a memory read of the WAL-index header, not a statement.

Every IMAP command ends with a catch-up, and the SQLite store answers most of them from
the heads it kept (:mod:`gateway.store.sqlite.quiet`) as long as the file's change stamp
is unchanged. Half of that stamp is ``PRAGMA data_version``: it changes when another
connection (a ``popgate`` CLI command, the web server, another store in this process)
commits. Outside a transaction that statement opens and closes a read transaction on the
WAL: two ``fcntl`` locks and the WAL-index checks, ~6 us of CPU, the largest single item
on a NOOP's path (bench/README.md, "Issue 19, session 6"). The same fact is in memory:
every commit in WAL mode rewrites the header of the WAL index (the ``-shm`` file every
connection maps, https://www.sqlite.org/walformat.html §2.3.1: ``iChange`` counts the
transactions, ``mxFrame``, salts and checksums follow), so :meth:`CommitWatch.version`
maps that header and compares its 48 bytes with the last ones it saw: ~0.3 us.

The header also changes with this connection's own commits, which ``data_version`` does
not count (and the catch-up's cache relies on that: a write carries the heads it did not
touch over to the stamp after its commit). So after each of its own commits the store
calls :meth:`CommitWatch.committed`, which takes the new header as its own only when
``PRAGMA data_version`` (one statement per write, instead of one per command) is what it
was at the last such check: then no other connection has committed since, and the
header's change is this connection's commit. Otherwise the change counts as another
connection's (a spurious change costs the catch-ups one read; a missed one would hide a
CLI command's mail from every session, so every doubt counts as a change). A header that
is torn while a writer rewrites it only ever compares unequal. Where no header can be
mapped (``:memory:``, a journal mode other than WAL, an unexpected format) the watch
asks ``PRAGMA data_version`` every time, as before.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import struct
from pathlib import Path

HEADER_BYTES = 48
"""One copy of the WAL-index header (``WalIndexHdr``); the first copy is read."""

WAL_INDEX_VERSION = 3007000
"""``iVersion`` of the WAL-index format this module reads (every SQLite since 3.7.0)."""

_HEAD = struct.Struct("=IIIB")
"""``iVersion``, unused, ``iChange``, ``isInit``: native byte order, as SQLite writes it."""

MAP_BYTES = mmap.PAGESIZE
"""Bytes mapped: the page holding the header (the ``-shm`` file is 32 KiB or more)."""


class CommitWatch:
    """``data_version`` of one connection (one thread at a time), from the WAL-index
    header when it can be mapped."""

    __slots__ = ("_map", "_seen", "_version", "_checked")

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._seen = b""
        self._version = 0
        self._checked = 0
        """``PRAGMA data_version`` at the last :meth:`committed` (or at :meth:`open`)."""

    @property
    def mapped(self) -> bool:
        return self._map is not None

    def open(self, conn: sqlite3.Connection, path: Path) -> None:
        """Map the header of ``path``'s WAL index, once the connection has read the file
        in WAL mode (which creates and initialises it); leave the PRAGMA in use if that
        cannot be done."""
        self.close()
        if str(path) in ("", ":memory:"):
            return
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return
        try:
            fd = os.open(f"{path}-shm", os.O_RDONLY)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < MAP_BYTES:
                return
            mapped = mmap.mmap(fd, MAP_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            return
        finally:
            os.close(fd)
        version, _unused, _change, initialised = _HEAD.unpack_from(mapped)
        if version != WAL_INDEX_VERSION or initialised != 1:
            mapped.close()
            return
        self._map = mapped
        self._seen = mapped[:HEADER_BYTES]
        self._checked = conn.execute("PRAGMA data_version").fetchone()[0]

    def version(self, conn: sqlite3.Connection) -> int:
        """A number that changes when another connection has committed since the last
        call (and may change when none has); unchanged by this connection's commits
        that :meth:`committed` saw. A statement only when the header has changed."""
        mapped = self._map
        if mapped is None:
            return conn.execute("PRAGMA data_version").fetchone()[0]
        if mapped[:HEADER_BYTES] != self._seen:
            # A change, counted; the PRAGMA first and the header after it, so whatever
            # the PRAGMA counts is in the header counted now (the check of a later own
            # commit then starts from here, not from before this change).
            self._checked = conn.execute("PRAGMA data_version").fetchone()[0]
            self._seen = mapped[:HEADER_BYTES]
            self._version += 1
        return self._version

    def committed(self, conn: sqlite3.Connection) -> None:
        """Right after this connection's COMMIT, with :meth:`version` called inside that
        transaction (under the write lock, so the header seen then was the last commit's):
        a header changed since is this commit's if no other connection has committed since
        the last check; then it does not count as a change."""
        mapped = self._map
        if mapped is None:
            return  # data_version itself leaves this connection's commits out
        head = mapped[:HEADER_BYTES]  # read before the PRAGMA: a later commit shows there
        if head == self._seen:
            return  # the commit wrote no page, and nobody else has committed yet
        checked = conn.execute("PRAGMA data_version").fetchone()[0]
        if checked == self._checked:
            self._seen = head
        self._checked = checked

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
