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
from array import array
from collections.abc import Iterable, Sequence

from gateway.core.criteria import Criteria
from gateway.store.errors import MailboxNotFound
from gateway.store.interfaces import (
    Changes,
    MailboxCounts,
    MessageInfo,
    MessageRow,
    NewMessage,
    SelectionSummary,
    StoreResult,
)
from gateway.store.objectid import email_id
from gateway.store.rowdata import (
    DELETED_TOKEN,
    SEEN_TOKEN,
    copy_entries,
    plan_flags,
    split_seen,
)
from gateway.store.rules import flag_map
from gateway.store.schema import MESSAGE_SIZE_INDEX
from gateway.store.search import build_query
from gateway.store.sqlite.rows import SQLiteRows, uid_list


class SQLiteMessages(SQLiteRows):
    """:class:`~gateway.store.interfaces.Messages` on SQLite."""

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
        with self._read() as conn:
            self._require(conn, mailbox_id)
            cursor = conn.execute(
                "SELECT uid FROM mailbox_message WHERE mailbox_id = ? ORDER BY uid",
                (mailbox_id,),
            )
            return array("I", [row[0] for row in cursor])

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        with self._read() as conn:
            self._require(conn, mailbox_id)
            recent = array(
                "I",
                [
                    row[0]
                    for row in conn.execute(
                        "SELECT uid FROM mailbox_message WHERE mailbox_id = ? AND recent = 1"
                        " ORDER BY uid",
                        (mailbox_id,),
                    )
                ],
            )
            source, source_params = self._source(conn, mailbox_id, viewer)
            (first_unseen,) = conn.execute(
                f"SELECT min(uid) FROM {source}"
                " WHERE mailbox_id = ? AND instr(' ' || flags || ' ', ?) = 0",
                (*source_params, mailbox_id, SEEN_TOKEN),
            ).fetchone()
            # Keywords are never private, so the shared column has them all.
            texts = conn.execute(
                "SELECT DISTINCT flags FROM mailbox_message WHERE mailbox_id = ? AND flags != ''",
                (mailbox_id,),
            ).fetchall()
        keywords = {f for (text,) in texts for f in text.split() if not f.startswith("\\")}
        return SelectionSummary(
            recent=recent, first_unseen_uid=first_unseen, keywords=tuple(sorted(keywords))
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        with self._read() as conn:
            head = conn.execute(
                "SELECT highestmodseq FROM mailbox WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
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
        with self._read() as conn:
            self._require(conn, mailbox_id)
            source, source_params = self._source(conn, mailbox_id, viewer)
            wanted = sorted(set(uids))
            if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):
                # A contiguous run (FETCH 1:* in batches): a range scan of the primary
                # key, about twice as fast as joining a json_each list.
                where, params = "mm.uid BETWEEN ? AND ?", [wanted[0], wanted[-1]]
            else:
                where, params = "mm.uid IN (SELECT value FROM json_each(?))", [uid_list(wanted)]
            rows = conn.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.internaldate,"
                " m.internaldate_tz, m.envelope, m.bodystructure, m.body, m.parts,"
                " mm.savedate, m.sha256"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                f" WHERE mm.mailbox_id = ? AND {where} ORDER BY mm.uid",
                (*source_params, mailbox_id, *params),
            ).fetchall()
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

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        if not uids:
            with self._read() as conn:
                self._require(conn, mailbox_id)
            return {}
        wanted = sorted(set(uids))
        low, high = wanted[0], wanted[-1]
        with self._read() as conn:
            if high - low + 1 == len(wanted):
                # A contiguous run (the usual 1:500): a range scan of the primary key.
                rows = conn.execute(
                    "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                    " ON c.message_id = mm.message_id"
                    " WHERE mm.mailbox_id = ? AND mm.uid BETWEEN ? AND ?",
                    (mailbox_id, low, high),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                    " ON c.message_id = mm.message_id"
                    " WHERE mm.mailbox_id = ? AND mm.uid IN (SELECT value FROM json_each(?))",
                    (mailbox_id, uid_list(wanted)),
                ).fetchall()
            if len(rows) < len(wanted):
                self._require(conn, mailbox_id)
        return dict(rows)

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        """RFC 3501 §6.3.11. The new message is \\Recent in this mailbox."""
        flag_map(flags)  # validates (a lone str is refused) before the tuple() below
        (uid,) = self.append_many(
            mailbox_id, [NewMessage(raw, tuple(flags), internaldate)], viewer=viewer
        )
        return uid

    def append_many(
        self, mailbox_id: int, messages: Sequence[NewMessage], *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3502 MULTIAPPEND: every message is checked and analysed first, then all
        are inserted in one transaction with consecutive UIDs and one modseq."""
        if isinstance(messages, NewMessage):
            raise TypeError("messages must be a sequence of NewMessage")
        checked = [flag_map(item.flags) for item in messages]
        shared = self._is_shared(self.db, mailbox_id)
        prepared = []
        for item, flags in zip(messages, checked, strict=True):
            flags_text, seen = split_seen(flags, shared)
            raw, analysis, internal = self._ingest(item.raw, item.internaldate)
            prepared.append((raw, analysis, internal, flags_text, seen))
        if not prepared:
            return []
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            entries = [
                (self._insert_message(cur, raw, analysis, internal), flags_text)
                for raw, analysis, internal, flags_text, _seen in prepared
            ]
            uids = self._add_rows(cur, mailbox_id, entries)
            if shared and viewer is not None:
                seen_uids = [(u, True) for u, p in zip(uids, prepared, strict=True) if p[4]]
                if seen_uids:
                    modseq = self._highestmodseq(cur, mailbox_id)
                    self._set_private(cur, mailbox_id, viewer, seen_uids, modseq)
            changed.add(mailbox_id)
        return uids

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
        """RFC 3501 §6.4.6 with RFC 7162 §3.1.3 UNCHANGEDSINCE. All rows changed by one
        call share one new modseq; \\Recent in ``flags`` is ignored. In a shared mailbox
        \\Seen is ``viewer``'s own (and left alone without a viewer); UNCHANGEDSINCE and
        the returned modseqs are the viewer's (RFC 7162 §3.1.3 per member)."""
        if mode not in ("", "+", "-"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        given = flag_map(flags)
        updated: list[MessageRow] = []
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            shared = self._is_shared(cur, mailbox_id)
            rows = cur.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, p.seen, p.modseq"
                " FROM mailbox_message mm LEFT JOIN private_flag p"
                " ON p.mailbox_id = mm.mailbox_id AND p.uid = mm.uid AND p.user = ?"
                " WHERE mm.mailbox_id = ? AND mm.uid IN (SELECT value FROM json_each(?))"
                " ORDER BY mm.uid",
                (viewer if shared else None, mailbox_id, uid_list(uids)),
            ).fetchall()
            plan = plan_flags(rows, mode, given, unchangedsince, shared, viewer)
            writes, modified = plan.writes, plan.modified
            if writes:
                modseq = self._bump(cur, mailbox_id)
                cur.executemany(
                    "UPDATE mailbox_message SET flags = ?, modseq = ?"
                    " WHERE mailbox_id = ? AND uid = ?",
                    [
                        (t, modseq, mailbox_id, uid)
                        for uid, t, _p, _e, _r in writes
                        if t is not None
                    ],
                )
                if viewer is not None:
                    private = [(uid, p) for uid, _t, p, _e, _r in writes if p is not None]
                    self._set_private(cur, mailbox_id, viewer, private, modseq)
                updated = plan.rows(modseq, self._flags)
                changed.add(mailbox_id)
        return StoreResult(updated=updated, modified=modified)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """RFC 3501 §6.4.3 EXPUNGE and RFC 4315 §2.1 UID EXPUNGE (when ``uids`` is given)."""
        with self._write() as changed:
            cur = self.db
            self._require(cur, mailbox_id)
            sql = (
                "SELECT uid, message_id FROM mailbox_message WHERE mailbox_id = ?"
                " AND instr(' ' || flags || ' ', ?) > 0"
            )
            params: list[object] = [mailbox_id, DELETED_TOKEN]
            if uids is not None:
                sql += " AND uid IN (SELECT value FROM json_each(?))"
                params.append(uid_list(uids))
            rows = cur.execute(sql + " ORDER BY uid", params).fetchall()
            if not rows:
                return []
            gone = [r[0] for r in rows]
            self._remove_rows(cur, mailbox_id, gone, self._bump(cur, mailbox_id))
            self._collect(cur, [r[1] for r in rows])
            changed.add(mailbox_id)
        return gone

    def copy(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        move: bool = False,
        *,
        viewer: str | None = None,
    ) -> list[tuple[int, int]]:
        """RFC 3501 §6.4.7 COPY / RFC 6851 MOVE: new UIDs follow source UID order
        (RFC 4315 COPYUID), flags go along, the copies are \\Recent; the message content
        is shared, not duplicated. A move is one transaction."""
        with self._write() as changed:
            cur = self.db
            self._require(cur, src_mailbox_id)
            self._require(cur, dst_mailbox_id)
            source, source_params = self._source(cur, src_mailbox_id, viewer)
            rows = cur.execute(
                f"SELECT uid, message_id, flags FROM {source}"
                " WHERE mailbox_id = ? AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                (*source_params, src_mailbox_id, uid_list(uids)),
            ).fetchall()
            if not rows:
                return []
            dst_shared = self._is_shared(cur, dst_mailbox_id)
            entries, seen_flags = copy_entries(rows, dst_shared)
            new_uids = self._add_rows(cur, dst_mailbox_id, entries)
            if dst_shared and viewer is not None:
                seen = [(u, True) for u, s in zip(new_uids, seen_flags, strict=True) if s]
                if seen:
                    modseq = self._highestmodseq(cur, dst_mailbox_id)
                    self._set_private(cur, dst_mailbox_id, viewer, seen, modseq)
            changed.add(dst_mailbox_id)
            old_uids = [r[0] for r in rows]
            if move:
                modseq = self._bump(cur, src_mailbox_id)
                self._remove_rows(cur, src_mailbox_id, old_uids, modseq)
                changed.add(src_mailbox_id)
        return list(zip(old_uids, new_uids, strict=True))

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3501 §6.4.4, answered by one SQL query (see :mod:`gateway.store.search`);
        in a shared mailbox SEEN/UNSEEN and MODSEQ are ``viewer``'s own."""
        with self._read() as conn:
            self._require(conn, mailbox_id)
            (largest,) = conn.execute(
                "SELECT max(uid) FROM mailbox_message WHERE mailbox_id = ?", (mailbox_id,)
            ).fetchone()
            source, source_params = self._source(conn, mailbox_id, viewer)
            query = build_query(
                mailbox_id,
                criteria,
                largest or 0,
                source=source,
                source_params=source_params,
                text_index=True,
            )
            if largest is None:
                return []
            return [r[0] for r in conn.execute(query.sql, query.params)]

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> None:
        with self._write():
            self.db.execute(
                "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = ? AND recent = 1"
                " AND uid IN (SELECT value FROM json_each(?))",
                (mailbox_id, uid_list(uids)),
            )
