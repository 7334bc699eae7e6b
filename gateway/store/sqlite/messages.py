"""The SQLite store's messages: reading, appending, flags, expunge, copy/move and search.

\\Recent is a per-row bit set at insertion (APPEND, delivery, COPY/MOVE destination) and
cleared by :meth:`~SQLiteMessages.clear_recent`; it appears in ``MessageRow.flags`` and
``MessageInfo.flags`` while set, so a session needs no second source. STORE ignores it
(RFC 3501 §2.3.2: it cannot be altered by the client). Clearing it is not a mailbox
change: no modseq, no listener call. Flags: system flags are stored in canonical case;
keywords keep the spelling first used and compare case-insensitively (ASCII).
SEARCH is one SQL query (:mod:`gateway.store.search`); search by sent date falls back to
INTERNALDATE when a message has no usable Date: header, as RFC 5256 §2.2 does for SORT.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Sequence

from gateway.core.criteria import Criteria
from gateway.core.flags import SEEN
from gateway.message.sections import header_span
from gateway.store.errors import MailboxNotFound
from gateway.store.heads import HeaderFieldReads
from gateway.store.interfaces import (
    Changes,
    MailboxCounts,
    MessageHead,
    MessageInfo,
    MessageRow,
    MessageSummary,
    SelectionSummary,
    StoreResult,
)
from gateway.store.objectid import email_id
from gateway.store.rowdata import (
    SEEN_TOKEN,
    plan_flags,
)
from gateway.store.rules import flag_map, leading_uids
from gateway.store.schema import MESSAGE_SIZE_INDEX
from gateway.store.sqlite.rows import SQLiteRows, uid_list, uid_range
from gateway.store.sqlite_flagindex import flag_term
from gateway.store.steps import MessageSteps


class SQLiteMessages(SQLiteRows, MessageSteps, HeaderFieldReads):
    """:class:`~gateway.store.interfaces.Messages` on SQLite: the reads here, the writes
    (append, STORE, expunge, copy/move) in :class:`~gateway.store.steps.MessageSteps`."""

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        with self._read() as conn:
            head = conn.execute(
                "SELECT uidvalidity, uidnext, highestmodseq FROM mailbox WHERE id = ?",
                (mailbox_id,),
            ).fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            source, source_params = self._source(conn, mailbox_id, viewer)
            # The planner would look each message up by its rowid, reading the whole wide
            # row for its size; the covering (id, size) index reads ~300 per page.
            messages, recent, unseen, size = conn.execute(
                "SELECT count(*), total(mm.recent),"
                " total(instr(' ' || mm.flags || ' ', ?) = 0), total(m.size)"
                f" FROM {source} mm JOIN message m INDEXED BY {MESSAGE_SIZE_INDEX}"
                " ON m.id = mm.message_id"
                " WHERE mm.mailbox_id = ?",
                (SEEN_TOKEN, *source_params, mailbox_id),
            ).fetchone()
        uidvalidity, uidnext, highestmodseq = head
        return MailboxCounts(
            messages=int(messages),
            recent=int(recent),
            unseen=int(unseen),
            uidnext=int(uidnext),
            uidvalidity=int(uidvalidity),
            highestmodseq=int(highestmodseq),
            size=int(size),
        )

    # ---- messages in a mailbox -----------------------------------------------------

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            source, source_params = self._source(conn, mailbox_id, viewer)
            rows = conn.execute(
                f"SELECT uid, flags, recent, modseq FROM {source} WHERE mailbox_id = ?"
                " ORDER BY uid",
                (*source_params, mailbox_id),
            ).fetchall()
        flags = self._flags
        return [MessageRow(uid, flags(text, recent), modseq) for uid, text, recent, modseq in rows]

    def message_uids(self, mailbox_id: int) -> array:
        # One JSON text for the whole column, decoded in C: no row tuple per message
        # (issue 19: 88 -> 41 us for 200 messages; SELECT reads this on every cache miss).
        # ``sorted`` keeps the UID order whatever order the aggregate saw (the rows come in
        # primary-key order, so it only checks that).
        with self._read() as conn:
            found = conn.execute(
                "SELECT (SELECT 1 FROM mailbox WHERE id = ?),"
                " (SELECT json_group_array(uid) FROM"
                " (SELECT uid FROM mailbox_message WHERE mailbox_id = ? ORDER BY uid))",
                (mailbox_id, mailbox_id),
            ).fetchone()
        if found[0] is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return array("I", sorted(json.loads(found[1])))

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        """After the existence check, one statement where three took turns: the \\Recent
        UIDs, the first unseen UID and the flag texts in use, as subqueries of one row,
        each aggregated in SQL, so no row reaches Python (issue 19: SELECT's cache miss).
        All three are answered by partial indexes (:mod:`gateway.store.sqlite_flagindex`):
        the \\Recent rows, the least unseen UID and each distinct flag text are found
        without a scan of the mailbox."""
        with self._read() as conn:
            self._require(conn, mailbox_id)
            source, source_params = self._source(conn, mailbox_id, viewer)
            # Keywords are never private, so the shared column has them all. The flag
            # texts are joined by spaces: splitting the whole on whitespace gives the
            # same tokens as splitting each text.
            recent, first_unseen, texts = conn.execute(
                "SELECT (SELECT json_group_array(uid) FROM mailbox_message"
                " WHERE mailbox_id = ? AND recent = 1),"
                f" (SELECT min(uid) FROM {source} WHERE mailbox_id = ? AND {_UNSEEN}),"
                f" ({_FLAG_TEXTS})",
                (mailbox_id, *source_params, mailbox_id, mailbox_id, mailbox_id),
            ).fetchone()
        keywords = {f for f in (texts or "").split() if not f.startswith("\\")}
        return SelectionSummary(
            recent=array("I", sorted(json.loads(recent))),
            first_unseen_uid=first_unseen,
            keywords=tuple(sorted(keywords)),
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        # Every command's catch-up lands here (RFC 3501 §7): when nothing at all was
        # written since this mailbox's head was last read, that head still holds and the
        # answer needs one PRAGMA instead of BEGIN, SELECT, COMMIT (issue 19: mbsync's
        # 10,000 one-message UID FETCHes).
        # A STORE made on this connection leaves its rows as the answer for the modseq
        # before it (the session's own catch-up, its siblings', the IDLE pushes), and a
        # write keeps the heads of the mailboxes it did not change (sqlite/quiet.py).
        stamp = self._change_stamp()
        quiet = self._quiet
        known = quiet.head(stamp, mailbox_id)
        if known is not None:
            if known <= modseq:
                return Changes(highestmodseq=known, changed=[], expunged=[])
            rows = quiet.delta(stamp, mailbox_id, modseq)
            if rows is not None:
                return Changes(highestmodseq=known, changed=rows, expunged=[])
        with self._read() as conn:
            head = conn.execute(
                "SELECT highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            quiet.record(stamp, mailbox_id, int(head[0]))
            if int(head[0]) <= modseq:
                # Every row, private \Seen and expunge record is stamped with a modseq
                # from _bump, so none is newer than HIGHESTMODSEQ (RFC 7162 §3.1.1): an
                # unchanged mailbox needs no scan (each IDLE and command catch-up).
                return Changes(highestmodseq=int(head[0]), changed=[], expunged=[])
            # "ORDER BY +uid" keeps the planner on the (mailbox_id, modseq) index and
            # sorts the few changed rows, instead of walking the whole mailbox in UID order.
            source, source_params = self._source(conn, mailbox_id, viewer)
            rows = conn.execute(
                f"SELECT uid, flags, recent, modseq FROM {source}"
                " WHERE mailbox_id = ? AND modseq > ? ORDER BY +uid",
                (*source_params, mailbox_id, modseq),
            ).fetchall()
            gone = conn.execute(
                "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY +uid",
                (mailbox_id, modseq),
            ).fetchall()
        flags = self._flags
        return Changes(
            highestmodseq=int(head[0]),
            changed=[MessageRow(u, flags(t, r), m) for u, t, r, m in rows],
            expunged=[r[0] for r in gone],
        )

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        return self._infos(self._uid_rows(mailbox_id, uids, viewer, _INFO_COLUMNS, _JOIN_MESSAGE))

    def _infos(self, rows: Iterable[Sequence]) -> list[MessageInfo]:
        """:class:`MessageInfo` of rows of :data:`_INFO_COLUMNS`."""
        flags, zone, utc = self._flags, self._zone, datetime.UTC
        fromtimestamp = datetime.datetime.fromtimestamp
        # Positional: this runs once per message of a FETCH 1:* (field order of MessageInfo).
        return [
            MessageInfo(
                uid,
                flags(text, recent),
                modseq,
                size,
                fromtimestamp(epoch, zone(minutes)),
                envelope,
                bodystructure,
                body,
                parts,
                fromtimestamp(saved, utc),
                email_id(digest),
            )
            for (
                uid,
                text,
                recent,
                modseq,
                size,
                epoch,
                minutes,
                envelope,
                bodystructure,
                body,
                parts,
                saved,
                digest,
            ) in rows
        ]

    def message_summaries(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageSummary]:
        rows = self._uid_rows(
            mailbox_id,
            uids,
            viewer,
            "mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.envelope, m.bodystructure",
            _JOIN_MESSAGE,
        )
        flags, new = self._flags, tuple.__new__
        # The tuple built directly: the named tuple's own __new__ is a Python call
        # (10,000 rows: ~8.5 ms that way, ~5.5 ms this way; issue 19).
        return [
            new(MessageSummary, (uid, flags(text, recent), modseq, size, envelope, structure))
            for uid, text, recent, modseq, size, envelope, structure in rows
        ]

    def message_summary_chunks(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> Iterator[list[MessageSummary]]:
        # In-process, on the caller's thread: there is nothing to overlap with, so the
        # batch is one statement read at once and handed out whole.
        rows = self.message_summaries(mailbox_id, uids, viewer=viewer)
        if rows:
            yield rows

    def message_header_fields(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        names: tuple[str, ...],
        *,
        viewer: str | None = None,
    ) -> list[MessageHead]:
        # The rows without a blob column, and the fields as kept (gateway.store.heads):
        # a list view already seen is this one statement.
        rows = self._uid_rows(
            mailbox_id,
            uids,
            viewer,
            "mm.uid, mm.flags, mm.recent, mm.modseq, m.size",
            _JOIN_MESSAGE,
        )
        if not rows:
            return []
        get = self._head_fields(mailbox_id, names, [row[0] for row in rows]).get
        flags, new = self._flags, tuple.__new__
        return [
            new(MessageHead, (uid, flags(text, recent), modseq, size, data))
            for uid, text, recent, modseq, size in rows
            if (data := get(uid)) is not None
        ]

    def _head_sources(
        self, mailbox_id: int, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes, str]]:
        # One statement: the part map and, for a small message, its bytes in the row (as
        # message_bytes_batch); a large one gives its header section alone through the
        # blob API, which reads only the pages that hold it.
        conn = self.db
        where, params = uid_range(uids)
        rows = conn.execute(
            "SELECT mm.uid, mm.message_id, m.parts, CASE WHEN length(c.raw) <= ? THEN c.raw END"
            f" FROM mailbox_message mm {_JOIN_MESSAGE}"
            " JOIN content c ON c.message_id = mm.message_id"
            f" WHERE mm.mailbox_id = ? AND {where}",
            (ROW_BODY_BYTES, mailbox_id, *params),
        ).fetchall()
        for uid, message_id, parts, raw in rows:
            if raw is None:
                try:
                    with conn.blobopen("content", "raw", message_id, readonly=True) as blob:
                        span = header_span(parts)
                        raw = blob.read() if span is None else blob.read(span)
                except sqlite3.OperationalError:  # "no such rowid": gone since the SELECT
                    continue
            yield uid, raw, parts

    def _uid_rows(
        self, mailbox_id: int, uids: Sequence[int], viewer: str | None, columns: str, join: str
    ) -> list[tuple]:
        """``columns`` of ``viewer``'s rows for ``uids`` (``mm``, plus what ``join`` adds),
        in UID order. One statement is its own snapshot: no BEGIN/COMMIT around it, and
        the mailbox is looked up only when no row came back (issue 19: per-command
        statements)."""
        conn = self.db
        source, source_params = self._source(conn, mailbox_id, viewer)
        where, params = uid_range(uids)
        rows = conn.execute(
            f"SELECT {columns} FROM {source} mm {join}"
            f" WHERE mm.mailbox_id = ? AND {where} ORDER BY mm.uid",
            (*source_params, mailbox_id, *params),
        ).fetchall()
        if not rows:
            self._require(conn, mailbox_id)
        return rows

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        with self._read() as conn:
            row = conn.execute(
                "SELECT c.raw FROM mailbox_message mm JOIN content c"
                " ON c.message_id = mm.message_id WHERE mm.mailbox_id = ? AND mm.uid = ?",
                (mailbox_id, uid),
            ).fetchone()
            if row is None:
                self._require(conn, mailbox_id)
                raise KeyError(uid)
        return bytes(row[0])

    def message_info_with_bytes(
        self, mailbox_id: int, uids: Sequence[int], budget: int, *, viewer: str | None = None
    ) -> tuple[list[MessageInfo], dict[int, bytes]]:
        if len(uids) != 1:
            infos = self.message_info(mailbox_id, uids, viewer=viewer)
            return infos, self.message_bytes_batch(mailbox_id, leading_uids(infos, budget))
        # One message (a client opening it; mbsync's UID FETCH n BODY.PEEK[] for each):
        # its row and, when small, its bytes in one statement, where message_info and
        # message_bytes_batch took two and a blob (issue 19).
        rows = self._uid_rows(
            mailbox_id,
            uids,
            viewer,
            f"{_INFO_COLUMNS}, mm.message_id,"
            f" CASE WHEN length(c.raw) <= {ROW_BODY_BYTES:d} THEN c.raw END",
            f"{_JOIN_MESSAGE} JOIN content c ON c.message_id = mm.message_id",
        )
        if not rows:
            return [], {}
        *row, message_id, raw = rows[0]
        infos = self._infos([row])
        if raw is None:
            try:
                with self.db.blobopen("content", "raw", message_id, readonly=True) as blob:
                    raw = blob.read()
            except sqlite3.OperationalError:  # "no such rowid": gone since the SELECT
                return infos, {}
        return infos, {infos[0].uid: raw}

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        if not uids:
            with self._read() as conn:
                self._require(conn, mailbox_id)
            return {}
        wanted = sorted(set(uids))
        low, high = wanted[0], wanted[-1]
        if low == high:
            return self._one_body(mailbox_id, low)
        # Small bodies come in the rows of one statement; each large one through SQLite's
        # blob API, one read into the bytes object returned: a blob column in a result
        # row is first assembled from its overflow pages into a buffer of SQLite's and
        # then copied into Python, one copy more (33 MB of UID FETCH 1:500 BODY.PEEK[]:
        # 7.4 -> 5.0 ms of CPU, issue 19), while opening a blob prepares a statement of
        # its own, which costs more than that copy for a few KB (a 25-message list view
        # of 4 KB messages: 0.105 -> 0.04 ms). length() reads no overflow page, so a
        # large body is not read twice.
        source = "FROM mailbox_message mm JOIN content c ON c.message_id = mm.message_id"
        columns = "mm.uid, mm.message_id, CASE WHEN length(c.raw) <= ? THEN c.raw END"
        with self._read() as conn:
            if high - low + 1 == len(wanted):
                # A contiguous run (the usual 1:500): a range scan of the primary key.
                rows = conn.execute(
                    f"SELECT {columns} {source}"
                    " WHERE mm.mailbox_id = ? AND mm.uid BETWEEN ? AND ?",
                    (ROW_BODY_BYTES, mailbox_id, low, high),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {columns} {source}"
                    " WHERE mm.mailbox_id = ? AND mm.uid IN (SELECT value FROM json_each(?))",
                    (ROW_BODY_BYTES, mailbox_id, uid_list(wanted)),
                ).fetchall()
            if len(rows) < len(wanted):
                self._require(conn, mailbox_id)
            bodies: dict[int, bytes] = {}
            for uid, message_id, raw in rows:
                if raw is not None:
                    bodies[uid] = raw
                    continue
                with conn.blobopen("content", "raw", message_id, readonly=True) as blob:
                    bodies[uid] = blob.read()
        return bodies

    def _one_body(self, mailbox_id: int, uid: int) -> dict[int, bytes]:
        """:meth:`message_bytes_batch` of one UID (mbsync asks for every message in its
        own UID FETCH): two statements without BEGIN/COMMIT around them (issue 19). A
        row another connection removes between them reads as expunged meanwhile."""
        conn = self.db
        row = conn.execute(
            "SELECT message_id FROM mailbox_message WHERE mailbox_id = ? AND uid = ?",
            (mailbox_id, uid),
        ).fetchone()
        if row is None:
            self._require(conn, mailbox_id)
            return {}
        try:
            with conn.blobopen("content", "raw", row[0], readonly=True) as blob:
                return {uid: blob.read()}
        except sqlite3.OperationalError:  # "no such rowid": gone since the SELECT
            return {}

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3501 §6.4.4, answered by one SQL query (see :mod:`gateway.store.search`);
        in a shared mailbox SEEN/UNSEEN and MODSEQ are ``viewer``'s own."""
        # The UIDs come as one JSON text decoded in C, not a row tuple each (a SEARCH
        # UNSEEN of a 5,000-message mailbox matches thousands); ``sorted`` only checks
        # the order the aggregate saw.
        with self._read() as conn:
            self._require(conn, mailbox_id)
            rows = self._query_rows(
                conn,
                mailbox_id,
                criteria,
                viewer,
                text_index=True,
                columns="json_group_array(mm.uid)",
                order="1",
            )
        return sorted(json.loads(rows[0][0])) if rows else []

    def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Iterable[str],
        unchangedsince: int | None = None,
        *,
        viewer: str | None = None,
    ) -> StoreResult:
        # Most STOREs of a mail client change nothing (\Seen set again on a message read
        # elsewhere, a flag cleared that is not there): the rows are read first with one
        # statement, its own snapshot, and a STORE that would write nothing ends there,
        # as if it had run at that snapshot: no BEGIN IMMEDIATE, COMMIT, mailbox check or
        # synchronous switch (issue 19: four to six statements fewer). One that changes
        # something runs the shared locked read-plan-write (MessageSteps.store_flags),
        # which reads the rows again under the write lock.
        if mode not in ("", "+", "-"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        flags = tuple(flags)  # read twice when the locked path below runs
        given = flag_map(flags)
        conn = self.db
        shared = self._is_shared(conn, mailbox_id)
        rows = self._flag_rows(conn, mailbox_id, uids, viewer if shared else None)
        plan = plan_flags(rows, mode, given, unchangedsince, shared, viewer)
        if not plan.writes:
            if not rows:
                self._require(conn, mailbox_id)
            unchanged = None if shared else plan.unchanged(rows, self._flags)
            return StoreResult(updated=[], modified=plan.modified, unchanged=unchanged)
        # A flag-only write: lazy under deferred_sync(lazy_flags=True) (connection.py).
        with self._flags_only():
            return super().store_flags(mailbox_id, uids, mode, flags, unchangedsince, viewer=viewer)

    def _flags_written(self, mailbox_id: int, modseq: int, rows: list[MessageRow]) -> None:
        # The written rows answer the catch-ups that follow (sqlite/quiet.py).
        self._quiet.wrote_rows(mailbox_id, modseq, rows)

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        with self._flags_only(), self._write():
            rows = self.db.execute(
                "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = ? AND recent = 1"
                " AND uid IN (SELECT value FROM json_each(?)) RETURNING uid",
                (mailbox_id, uid_list(uids)),
            ).fetchall()
        return sorted(row[0] for row in rows)


_UNSEEN = flag_term(SEEN, False, "flags")
"""Whether a space-separated flag text lacks the \\Seen token, written as the partial index
of unseen rows is (gateway/store/sqlite_flagindex.py): the least unseen UID of a mailbox is
then the first entry of that index, not the end of a scan past every seen message."""

_FLAG_TEXTS = (
    "WITH RECURSIVE text(flags) AS ("
    " SELECT (SELECT min(flags) FROM mailbox_message WHERE mailbox_id = ? AND flags != '')"
    " UNION ALL SELECT (SELECT min(flags) FROM mailbox_message"
    " WHERE mailbox_id = ? AND flags != '' AND flags > text.flags)"
    " FROM text WHERE text.flags IS NOT NULL)"
    " SELECT group_concat(flags, ' ') FROM text"
)
"""The distinct non-empty flag texts of a mailbox (two parameters: its id, twice), joined
by spaces: each step is the next text in the partial index of flag texts after the last
one, a descent of its B-tree, so a mailbox with a dozen flag combinations costs a dozen
descents whatever its size, where ``SELECT DISTINCT flags`` read every row (5,000
messages: ~600 -> ~25 us)."""

_JOIN_MESSAGE = "JOIN message m ON m.id = mm.message_id"

_INFO_COLUMNS = (
    "mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.internaldate, m.internaldate_tz,"
    " m.envelope, m.bodystructure, m.body, m.parts, mm.savedate, m.sha256"
)
"""The columns of a :class:`MessageInfo`, in its field order (:meth:`SQLiteMessages._infos`)."""

ROW_BODY_BYTES = 16 * 1024
"""Bodies up to this size come in the result rows of :meth:`SQLiteMessages.message_bytes_batch`;
larger ones through the blob API (where one copy fewer outweighs opening the blob)."""
