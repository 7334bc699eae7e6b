"""The SQLite store's row-level steps, run inside a transaction by the concern modules.

Finding and creating mailbox rows, the modseq and UID counters (RFC 7162 §3.1.1,
RFC 3501 §2.3.1.1), inserting a message with its precomputed search columns, adding
and removing ``mailbox_message`` rows, and a shared mailbox member's private \\Seen.
Shared mailboxes (owner ``shared:NAME``): \\Seen lives in ``private_flag`` per viewer,
never in the shared ``flags`` column; reads with a ``viewer`` go through
:data:`PRIVATE_SOURCE`, a subquery with the same columns as ``mailbox_message`` that
merges the viewer's \\Seen and modseq in.
"""

from __future__ import annotations

import datetime
import json
import mmap
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gateway.core.flags import DELETED
from gateway.message.analysis import Analysis, analyze
from gateway.store.errors import MailboxNotFound, StoreError
from gateway.store.interfaces import DELIMITER, Mailbox, MessageRow, is_shared_owner
from gateway.store.rowdata import MESSAGE_COLUMNS, internal_values, message_values
from gateway.store.rules import MAX_UID, check_message
from gateway.store.sorting import INSERT_SORT_KEY, sort_key_row
from gateway.store.sqlite.connection import SQLiteConnection
from gateway.store.sqlite_flagindex import flag_term
from gateway.store.steps import RowSteps

PRIVATE_SOURCE = (
    "(SELECT x.mailbox_id AS mailbox_id, x.uid AS uid, x.message_id AS message_id,"
    " CASE WHEN p.seen = 1 THEN trim(x.flags || ' \\Seen') ELSE x.flags END AS flags,"
    " max(x.modseq, coalesce(p.modseq, 0)) AS modseq, x.recent AS recent,"
    " x.savedate AS savedate"
    " FROM mailbox_message x LEFT JOIN private_flag p ON p.mailbox_id = x.mailbox_id"
    " AND p.uid = x.uid AND p.user = ?)"
)
"""``mailbox_message`` as one viewer sees a shared mailbox (one parameter: the viewer)."""


MAILBOX_COLUMNS = (
    "m.id, m.owner, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, m.special_use,"
    " s.name IS NOT NULL"
)
MAILBOX_FROM = "mailbox m LEFT JOIN subscription s ON s.owner = m.owner AND s.name = m.name"


def uid_list(uids: Iterable[int]) -> str:
    """UIDs as one JSON parameter for ``json_each``: any count, one bound value."""
    return json.dumps([int(u) for u in uids])


def uid_range(uids: Sequence[int]) -> tuple[str, list]:
    """The WHERE term (on ``mm.uid``) and its parameters for a set of UIDs."""
    wanted = sorted(set(uids))
    if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):
        # A contiguous run (FETCH 1:* in batches): a range scan of the primary key,
        # about twice as fast as joining a json_each list.
        return "mm.uid BETWEEN ? AND ?", [wanted[0], wanted[-1]]
    return "mm.uid IN (SELECT value FROM json_each(?))", [uid_list(wanted)]


BLOB_CHUNK = 1024 * 1024
"""Bytes written at a time when a large message goes in through incremental blob I/O."""


def _insert_content(cur: sqlite3.Connection, message_id: int, raw: bytes | mmap.mmap) -> None:
    """The message's bytes. A spooled message (an ``mmap``) is written piece by piece
    into a ``zeroblob`` with :meth:`sqlite3.Connection.blobopen`: binding it whole would
    make SQLite copy it (``SQLITE_TRANSIENT``) and then build the row record, two more
    copies of a message that may be 64 MiB."""
    if isinstance(raw, bytes):
        cur.execute("INSERT INTO content (message_id, raw) VALUES (?, ?)", (message_id, raw))
        return
    size = len(raw)
    cur.execute("INSERT INTO content (message_id, raw) VALUES (?, zeroblob(?))", (message_id, size))
    with cur.blobopen("content", "raw", message_id) as blob, memoryview(raw) as view:
        for start in range(0, size, BLOB_CHUNK):
            blob.write(view[start : start + BLOB_CHUNK])


class SQLiteRows(SQLiteConnection, RowSteps):
    """Steps that run inside a caller's transaction (``cur`` is the connection in it):
    the :class:`~gateway.store.steps.RowSteps` the shared write algorithms call."""

    _private_source = PRIVATE_SOURCE

    # ---- transactions and locks (RowSteps) -----------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, set[int]]]:
        with self._write() as changed:
            yield self.db, changed

    @contextmanager
    def _peek(self) -> Iterator[sqlite3.Connection]:
        yield self.db

    def _lock_mailboxes(self, cur: sqlite3.Connection, *mailbox_ids: int) -> None:
        # BEGIN IMMEDIATE holds the whole file: only existence is left to check.
        for mailbox_id in mailbox_ids:
            self._require(cur, mailbox_id)

    def _lock_existing(self, cur: sqlite3.Connection, *mailbox_ids: int) -> None:
        pass  # BEGIN IMMEDIATE holds the whole file

    def _lock_owner(self, cur: sqlite3.Connection, owner: str) -> None:
        pass  # BEGIN IMMEDIATE holds the whole file

    # ---- rows to change (RowSteps) --------------------------------------------------

    def _flag_rows(
        self, cur: sqlite3.Connection, mailbox_id: int, uids: Sequence[int], private_of: str | None
    ) -> list[Any]:
        # A contiguous run (the usual STORE n or n:m) as a range of the primary key: a
        # json_each list builds an ephemeral table each time (~20 us for one UID).
        where, params = uid_range(uids)
        return cur.execute(
            "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, p.seen, p.modseq"
            " FROM mailbox_message mm LEFT JOIN private_flag p"
            " ON p.mailbox_id = mm.mailbox_id AND p.uid = mm.uid AND p.user = ?"
            f" WHERE mm.mailbox_id = ? AND {where} ORDER BY mm.uid",
            (private_of, mailbox_id, *params),
        ).fetchall()

    def _write_flags(self, cur: sqlite3.Connection, rows: list[tuple[str, int, int, int]]) -> None:
        cur.executemany(
            "UPDATE mailbox_message SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
            rows,
        )

    def _deleted_rows(
        self, cur: sqlite3.Connection, mailbox_id: int, uids: Sequence[int] | None
    ) -> list[Any]:
        # The \\Deleted test as its partial index is written: EXPUNGE and CLOSE walk the
        # few deleted rows, not the mailbox (gateway/store/sqlite_flagindex.py).
        sql = (
            "SELECT uid, message_id FROM mailbox_message WHERE mailbox_id = ?"
            f" AND {flag_term(DELETED, True, 'flags')}"
        )
        params: list[object] = [mailbox_id]
        if uids is not None:
            sql += " AND uid IN (SELECT value FROM json_each(?))"
            params.append(uid_list(uids))
        return cur.execute(sql + " ORDER BY uid", params).fetchall()

    def _copy_rows(
        self,
        cur: sqlite3.Connection,
        mailbox_id: int,
        uids: Sequence[int] | None,
        viewer: str | None,
    ) -> list[Any]:
        source, params = self._source(cur, mailbox_id, viewer)
        sql = f"SELECT uid, message_id, flags FROM {source} WHERE mailbox_id = ?"
        params = [*params, mailbox_id]
        if uids is not None:
            sql += " AND uid IN (SELECT value FROM json_each(?))"
            params.append(uid_list(uids))
        return cur.execute(sql + " ORDER BY uid", params).fetchall()

    def _mailbox_message_ids(self, cur: sqlite3.Connection, mailbox_id: int) -> list[int]:
        return [
            r[0]
            for r in cur.execute(
                "SELECT message_id FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
            )
        ]

    def _delete_mailbox_row(self, cur: sqlite3.Connection, mailbox_id: int) -> None:
        self._quiet.bumped(mailbox_id)  # its head is no longer an answer
        cur.execute("DELETE FROM mailbox WHERE id = ?", (mailbox_id,))

    def _family(self, cur: sqlite3.Connection, user: str, name: str) -> list[tuple[int, str]]:
        prefix = name + DELIMITER
        return cur.execute(
            "SELECT id, name FROM mailbox WHERE owner = ?"
            " AND (name = ? OR substr(name, 1, ?) = ?) ORDER BY name",
            (user, name, len(prefix), prefix),
        ).fetchall()

    def _rename_row(
        self, cur: sqlite3.Connection, user: str, mailbox_id: int, old: str, new: str
    ) -> None:
        cur.execute("UPDATE mailbox SET name = ? WHERE id = ?", (new, mailbox_id))
        if cur.execute(
            "DELETE FROM subscription WHERE owner = ? AND name = ? RETURNING 1", (user, old)
        ).fetchall():
            cur.execute(
                "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)", (user, new)
            )

    def _largest_uid(self, cur: sqlite3.Connection, mailbox_id: int) -> int | None:
        return cur.execute(
            "SELECT max(uid) FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
        ).fetchone()[0]

    def _fetch_query(
        self, cur: sqlite3.Connection, sql: str, params: Sequence[object]
    ) -> list[Any]:
        return cur.execute(sql, params).fetchall()

    def _subscribe_all(self, cur: sqlite3.Connection, user: str, names: Sequence[str]) -> None:
        cur.executemany(
            "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)",
            [(user, n) for n in names],
        )

    # ---- mailboxes, counters and rows -----------------------------------------------

    def _require(self, cur: sqlite3.Connection, mailbox_id: int) -> None:
        if cur.execute("SELECT 1 FROM mailbox WHERE id = ?", (mailbox_id,)).fetchone() is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")

    def _is_shared(self, cur: sqlite3.Connection, mailbox_id: int) -> bool:
        """Whether the mailbox belongs to a shared tree; raises MailboxNotFound."""
        known = self._shared_ids.get(mailbox_id)
        if known is None:
            row = cur.execute("SELECT owner FROM mailbox WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            known = self._shared_ids[mailbox_id] = is_shared_owner(row[0])
        return known

    def _set_private(
        self,
        cur: sqlite3.Connection,
        mailbox_id: int,
        viewer: str,
        entries: Iterable[tuple[int, bool]],
        modseq: int,
    ) -> None:
        """Record ``viewer``'s own \\Seen for (uid, seen) entries, stamped ``modseq``."""
        cur.executemany(
            "INSERT INTO private_flag (mailbox_id, user, uid, seen, modseq)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (mailbox_id, user, uid)"
            " DO UPDATE SET seen = excluded.seen, modseq = excluded.modseq",
            [(mailbox_id, viewer, uid, int(seen), modseq) for uid, seen in entries],
        )

    def _highestmodseq(self, cur: sqlite3.Connection, mailbox_id: int) -> int:
        row = cur.execute(
            "SELECT highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return int(row[0])

    def _find(self, cur: sqlite3.Connection, user: str, name: str) -> Mailbox | None:
        row = cur.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} WHERE m.owner = ? AND m.name = ?",
            (user, name),
        ).fetchone()
        return None if row is None else Mailbox(*row[:7], subscribed=bool(row[7]))

    def _bump(self, cur: sqlite3.Connection, mailbox_id: int) -> int:
        """The mailbox's next modseq, recorded as its HIGHESTMODSEQ (RFC 7162 §3.1.1)."""
        self._quiet.bumped(mailbox_id)
        rows = cur.execute(
            "UPDATE mailbox SET highestmodseq = highestmodseq + 1 WHERE id = ?"
            " RETURNING highestmodseq",
            (mailbox_id,),
        ).fetchall()
        if not rows:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return int(rows[0][0])

    def _next_uidvalidity(self, cur: sqlite3.Connection) -> int:
        """A UIDVALIDITY never handed out before in this store: a persistent counter that
        also keeps up with the clock, so values look like Dovecot's (creation times)."""
        (counter,) = cur.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(counter), int(self._clock()), 1)
        if value > MAX_UID:
            raise StoreError("UIDVALIDITY space exhausted")
        cur.execute("UPDATE meta SET value = ? WHERE key = 'uidvalidity'", (value + 1,))
        return value

    def _create_tx(
        self, cur: sqlite3.Connection, user: str, name: str, special_use: str | None
    ) -> int:
        """Insert one mailbox row (no parent handling); returns its id."""
        return int(
            cur.execute(
                "INSERT INTO mailbox (owner, name, uidvalidity, special_use) VALUES (?, ?, ?, ?)",
                (user, name, self._next_uidvalidity(cur), special_use),
            ).lastrowid
        )

    def _ingest(
        self,
        raw: bytes | mmap.mmap,
        internaldate: datetime.datetime | None,
        analysis: Analysis | None = None,
    ) -> tuple[bytes | mmap.mmap, Analysis, tuple[int, int, int]]:
        """Checks and computations done before the write transaction starts. A delivery's
        own ``analysis`` (made by the fetcher) is used when this store analyses with the
        standard :func:`~gateway.message.analysis.analyze` anyway."""
        check_message(raw, self.max_message_size)
        if analysis is None or self._analyze is not analyze:
            analysis = self._analyze(raw)
        return raw, analysis, internal_values(internaldate, self._now())

    def _insert_message(
        self,
        cur: sqlite3.Connection,
        raw: bytes | mmap.mmap,
        analysis: Analysis,
        internal: tuple[int, int, int],
        digest: bytes | None = None,
    ) -> int:
        values = message_values(raw, analysis, internal, digest=digest)
        message_id = int(
            cur.execute(
                f"INSERT INTO message ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values.row,
            ).lastrowid
        )
        _insert_content(cur, message_id, raw)
        cur.executemany(
            "INSERT INTO header_field (message_id, name, pos, value_folded) VALUES (?, ?, ?, ?)",
            [(message_id, name, pos, value) for pos, name, value in values.headers],
        )
        cur.execute(
            INSERT_SORT_KEY,
            sort_key_row(message_id, internal[0], values.row[5], len(raw), analysis.sort),  # type: ignore[arg-type]
        )
        cur.execute(
            "INSERT INTO message_text (message_id, header_folded, text_folded) VALUES (?, ?, ?)",
            (message_id, values.header_folded, values.text_folded),
        )
        self._text_waiting += 1  # in the full-text backlog until its batch is indexed
        return message_id

    def _alloc_uids(self, cur: sqlite3.Connection, mailbox_id: int, count: int) -> tuple[int, int]:
        modseq = self._bump(cur, mailbox_id)
        (end,) = cur.execute(
            "UPDATE mailbox SET uidnext = uidnext + ? WHERE id = ? RETURNING uidnext",
            (count, mailbox_id),
        ).fetchall()[0]
        return modseq, end

    def _insert_rows(self, cur: sqlite3.Connection, rows: list[tuple], recent: bool = True) -> None:
        bit = int(recent)
        cur.executemany(
            "INSERT INTO mailbox_message"
            " (mailbox_id, uid, message_id, flags, modseq, recent, savedate)"
            f" VALUES (?, ?, ?, ?, ?, {bit}, ?)",
            rows,
        )
        mailbox_id, modseq = rows[0][0], rows[0][4]
        if self._shared_ids.get(mailbox_id) is False:
            # The new rows answer the catch-ups that follow (sqlite/quiet.py): the
            # appending session's own, its siblings', the IDLE fan-out's.
            flags = self._flags
            self._quiet.wrote_rows(
                mailbox_id, modseq, [MessageRow(r[1], flags(r[3], bit), modseq) for r in rows]
            )

    def _remove_rows(
        self, cur: sqlite3.Connection, mailbox_id: int, uids: Sequence[int], modseq: int
    ) -> None:
        """Drop rows from a mailbox, remembering the UIDs for QRESYNC (RFC 7162 §3.2.10)."""
        cur.executemany(
            "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, uid, modseq) for uid in uids],
        )
        cur.execute(
            "DELETE FROM mailbox_message WHERE mailbox_id = ?"
            " AND uid IN (SELECT value FROM json_each(?))",
            (mailbox_id, uid_list(uids)),
        )
        cur.execute(
            "DELETE FROM private_flag WHERE mailbox_id = ?"
            " AND uid IN (SELECT value FROM json_each(?))",
            (mailbox_id, uid_list(uids)),
        )

    def _collect(self, cur: sqlite3.Connection, message_ids: Iterable[int]) -> None:
        """Delete messages (and, by cascade, their content) no mailbox refers to any more."""
        cur.execute(
            "DELETE FROM message WHERE id IN (SELECT value FROM json_each(?))"
            " AND NOT EXISTS (SELECT 1 FROM mailbox_message x WHERE x.message_id = message.id)",
            (json.dumps(sorted(set(message_ids))),),
        )
