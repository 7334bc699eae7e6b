"""The PostgreSQL store's messages: reading, appending, flags, expunge, copy/move and search.

Semantics are the SQLite store's (:mod:`gateway.store.sqlite.messages`: \\Recent as a
per-row bit, system flags in canonical case, keywords compared case-insensitively), and
the flag arithmetic of STORE and COPY is shared with it (:mod:`gateway.store.rowdata`).
What differs is concurrency: every write locks the mailbox rows it changes before it
reads them (:meth:`~gateway.store.postgres.rows.PGRows._lock`), so a STORE or EXPUNGE
racing with a write on another node sees that write's result, never a stale row.
SEARCH is one SQL query built by :mod:`gateway.store.search` in the PostgreSQL dialect.
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
from gateway.store.postgres.rows import POSTGRESQL, PGRows
from gateway.store.rowdata import (
    DELETED_TOKEN,
    SEEN_TOKEN,
    copy_entries,
    plan_flags,
    split_seen,
)
from gateway.store.rules import flag_map
from gateway.store.search import build_query


def _uids(uids: Iterable[int]) -> list[int]:
    return [int(u) for u in uids]


class PGMessages(PGRows):
    """:class:`~gateway.store.interfaces.Messages` on PostgreSQL."""

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        with self._read() as cur:
            cur.execute(
                "SELECT uidvalidity, uidnext, highestmodseq FROM mailbox WHERE id = %s",
                (mailbox_id,),
            )
            head = cur.fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                "SELECT count(*), coalesce(sum(mm.recent), 0),"
                " count(*) FILTER (WHERE strpos(' ' || mm.flags || ' ', %s) = 0),"
                " coalesce(sum(m.size), 0)"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                " WHERE mm.mailbox_id = %s",
                (SEEN_TOKEN, *source_params, mailbox_id),
            )
            row = cur.fetchone()
        assert row is not None
        messages, recent, unseen, size = row
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
        with self._read() as cur:
            self._require(cur, mailbox_id)
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                f"SELECT uid, flags, recent, modseq FROM {source} src WHERE mailbox_id = %s"
                " ORDER BY uid",
                (*source_params, mailbox_id),
            )
            rows = cur.fetchall()
        flags = self._flags
        return [MessageRow(uid, flags(text, recent), modseq) for uid, text, recent, modseq in rows]

    def message_uids(self, mailbox_id: int) -> array:
        with self._read() as cur:
            self._require(cur, mailbox_id)
            cur.execute(
                "SELECT uid FROM mailbox_message WHERE mailbox_id = %s ORDER BY uid",
                (mailbox_id,),
            )
            return array("I", [row[0] for row in cur])

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        with self._read() as cur:
            self._require(cur, mailbox_id)
            cur.execute(
                "SELECT uid FROM mailbox_message WHERE mailbox_id = %s AND recent = 1"
                " ORDER BY uid",
                (mailbox_id,),
            )
            recent = array("I", [row[0] for row in cur])
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                f"SELECT min(uid) FROM {source} src"
                " WHERE mailbox_id = %s AND strpos(' ' || flags || ' ', %s) = 0",
                (*source_params, mailbox_id, SEEN_TOKEN),
            )
            first = cur.fetchone()
            # Keywords are never private, so the shared column has them all.
            cur.execute(
                "SELECT DISTINCT flags FROM mailbox_message WHERE mailbox_id = %s AND flags <> ''",
                (mailbox_id,),
            )
            texts = cur.fetchall()
        keywords = {f for (text,) in texts for f in text.split() if not f.startswith("\\")}
        return SelectionSummary(
            recent=recent,
            first_unseen_uid=None if first is None or first[0] is None else int(first[0]),
            keywords=tuple(sorted(keywords)),
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        with self._read() as cur:
            cur.execute("SELECT highestmodseq FROM mailbox WHERE id = %s", (mailbox_id,))
            head = cur.fetchone()
            if head is None:
                raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
            source, source_params = self._source(cur, mailbox_id, viewer)
            cur.execute(
                f"SELECT uid, flags, recent, modseq FROM {source} src"
                " WHERE mailbox_id = %s AND modseq > %s ORDER BY uid",
                (*source_params, mailbox_id, modseq),
            )
            rows = cur.fetchall()
            cur.execute(
                "SELECT uid FROM expunged WHERE mailbox_id = %s AND modseq > %s ORDER BY uid",
                (mailbox_id, modseq),
            )
            gone = cur.fetchall()
        flags = self._flags
        return Changes(
            highestmodseq=int(head[0]),
            changed=[MessageRow(u, flags(t, r), m) for u, t, r, m in rows],
            expunged=[r[0] for r in gone],
        )

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        wanted = sorted(set(_uids(uids)))
        with self._read() as cur:
            self._require(cur, mailbox_id)
            source, source_params = self._source(cur, mailbox_id, viewer)
            if wanted and wanted[-1] - wanted[0] + 1 == len(wanted):
                where, params = "mm.uid BETWEEN %s AND %s", [wanted[0], wanted[-1]]
            else:
                where, params = "mm.uid = ANY(%s::bigint[])", [wanted]
            cur.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, m.size, m.internaldate,"
                " m.internaldate_tz, m.envelope, m.bodystructure, m.body, m.parts,"
                " mm.savedate, m.sha256"
                f" FROM {source} mm JOIN message m ON m.id = mm.message_id"
                f" WHERE mm.mailbox_id = %s AND {where} ORDER BY mm.uid",
                (*source_params, mailbox_id, *params),
            )
            rows = cur.fetchall()
        return [
            MessageInfo(
                uid=uid,
                flags=self._flags(text, recent),
                modseq=modseq,
                size=size,
                internaldate=datetime.datetime.fromtimestamp(epoch, self._zone(minutes)),
                envelope=bytes(envelope),
                bodystructure=bytes(bodystructure),
                body=bytes(body),
                parts=parts,
                savedate=datetime.datetime.fromtimestamp(saved, datetime.UTC),
                emailid=email_id(bytes(digest)),
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
        with self._read() as cur:
            cur.execute(
                "SELECT c.raw FROM mailbox_message mm JOIN content c"
                " ON c.message_id = mm.message_id WHERE mm.mailbox_id = %s AND mm.uid = %s",
                (mailbox_id, uid),
            )
            row = cur.fetchone()
            if row is None:
                self._require(cur, mailbox_id)
                raise KeyError(uid)
        return bytes(row[0])

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        wanted = sorted(set(_uids(uids)))
        with self._read() as cur:
            if not wanted:
                self._require(cur, mailbox_id)
                return {}
            if wanted[-1] - wanted[0] + 1 == len(wanted):
                where, params = "mm.uid BETWEEN %s AND %s", [wanted[0], wanted[-1]]
            else:
                where, params = "mm.uid = ANY(%s::bigint[])", [wanted]
            cur.execute(
                "SELECT mm.uid, c.raw FROM mailbox_message mm JOIN content c"
                f" ON c.message_id = mm.message_id WHERE mm.mailbox_id = %s AND {where}",
                (mailbox_id, *params),
            )
            rows = cur.fetchall()
            if len(rows) < len(wanted):
                self._require(cur, mailbox_id)
        return {int(uid): bytes(raw) for uid, raw in rows}

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
        with self._cursor() as cur:
            shared = self._is_shared(cur, mailbox_id)
        prepared = []
        for item, flags in zip(messages, checked, strict=True):
            text, seen = split_seen(flags, shared)
            raw, analysis, internal = self._ingest(item.raw, item.internaldate)
            prepared.append((raw, analysis, internal, text, seen))
        if not prepared:
            return []
        with self._write() as (cur, changed):
            self._lock(cur, mailbox_id)
            entries = [
                (self._insert_message(cur, raw, analysis, internal), text)
                for raw, analysis, internal, text, _seen in prepared
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
        """RFC 3501 §6.4.6 with RFC 7162 §3.1.3 UNCHANGEDSINCE; as in the SQLite store,
        \\Seen in a shared mailbox is ``viewer``'s own."""
        if mode not in ("", "+", "-"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        given = flag_map(flags)
        updated: list[MessageRow] = []
        with self._write() as (cur, changed):
            self._lock(cur, mailbox_id)
            shared = self._is_shared(cur, mailbox_id)
            cur.execute(
                "SELECT mm.uid, mm.flags, mm.recent, mm.modseq, p.seen, p.modseq"
                " FROM mailbox_message mm LEFT JOIN private_flag p"
                " ON p.mailbox_id = mm.mailbox_id AND p.uid = mm.uid AND p.viewer = %s"
                " WHERE mm.mailbox_id = %s AND mm.uid = ANY(%s::bigint[]) ORDER BY mm.uid",
                (viewer if shared else None, mailbox_id, _uids(uids)),
            )
            plan = plan_flags(cur.fetchall(), mode, given, unchangedsince, shared, viewer)
            if plan.writes:
                modseq = self._bump(cur, mailbox_id)
                shared_rows = [
                    (t, modseq, mailbox_id, uid)
                    for uid, t, _p, _e, _r in plan.writes
                    if t is not None
                ]
                if shared_rows:
                    cur.executemany(
                        "UPDATE mailbox_message SET flags = %s, modseq = %s"
                        " WHERE mailbox_id = %s AND uid = %s",
                        shared_rows,
                    )
                if viewer is not None:
                    private = [(uid, p) for uid, _t, p, _e, _r in plan.writes if p is not None]
                    self._set_private(cur, mailbox_id, viewer, private, modseq)
                updated = plan.rows(modseq, self._flags)
                changed.add(mailbox_id)
        return StoreResult(updated=updated, modified=plan.modified)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """RFC 3501 §6.4.3 EXPUNGE and RFC 4315 §2.1 UID EXPUNGE (when ``uids`` is given)."""
        with self._write() as (cur, changed):
            self._lock(cur, mailbox_id)
            sql = (
                "SELECT uid, message_id FROM mailbox_message WHERE mailbox_id = %s"
                " AND strpos(' ' || flags || ' ', %s) > 0"
            )
            params: list[object] = [mailbox_id, DELETED_TOKEN]
            if uids is not None:
                sql += " AND uid = ANY(%s::bigint[])"
                params.append(_uids(uids))
            cur.execute(sql + " ORDER BY uid", params)
            rows = cur.fetchall()
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
        (RFC 4315 COPYUID), flags go along, the copies are \\Recent; the content is
        shared, not duplicated. Both mailboxes are locked (in id order) first."""
        with self._write() as (cur, changed):
            self._lock(cur, src_mailbox_id, dst_mailbox_id)
            source, source_params = self._source(cur, src_mailbox_id, viewer)
            cur.execute(
                f"SELECT uid, message_id, flags FROM {source} src"
                " WHERE mailbox_id = %s AND uid = ANY(%s::bigint[]) ORDER BY uid",
                (*source_params, src_mailbox_id, _uids(uids)),
            )
            rows = cur.fetchall()
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
        with self._read() as cur:
            self._require(cur, mailbox_id)
            cur.execute("SELECT max(uid) FROM mailbox_message WHERE mailbox_id = %s", (mailbox_id,))
            row = cur.fetchone()
            largest = None if row is None else row[0]
            source, source_params = self._source(cur, mailbox_id, viewer)
            query = build_query(
                mailbox_id,
                criteria,
                largest or 0,
                source=source,
                source_params=source_params,
                dialect=POSTGRESQL,
            )
            if largest is None:
                return []
            cur.execute(query.sql, query.params)
            return [r[0] for r in cur.fetchall()]

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> None:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE mailbox_message SET recent = 0 WHERE mailbox_id = %s AND recent = 1"
                " AND uid = ANY(%s::bigint[])",
                (mailbox_id, _uids(uids)),
            )
