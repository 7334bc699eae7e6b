"""The memory store's messages: reading, appending, flags, expunge, copy/move, and search
by evaluating the criteria tree on each row (the same checks as the SQL translator)."""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Iterable, Iterator, Sequence

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    EmailId,
    Flag,
    Header,
    Instant,
    ModSeq,
    Not,
    Or,
    Size,
    Text,
    Uid,
)
from gateway.core.flags import RECENT
from gateway.store.heads import HeaderFieldReads
from gateway.store.interfaces import (
    Changes,
    MailboxCounts,
    MessageFlags,
    MessageInfo,
    MessageRow,
    MessageSummary,
    NewMessage,
    SelectionSummary,
    StoreResult,
)
from gateway.store.memory.state import MemoryBase, Row
from gateway.store.objectid import email_id, save_day
from gateway.store.rules import SEEN_KEY, flag_map, leading_uids
from gateway.store.search import build_query, canonical_flag

SUMMARY_CHUNK = 2
"""Summaries per list of :meth:`MemoryMessages.message_summary_chunks`: small, so that
every caller tested on the memory store meets lists that split its batches."""


class MemoryMessages(MemoryBase, HeaderFieldReads):
    """:class:`~gateway.store.interfaces.Messages` in memory."""

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        box = self._box(mailbox_id)
        rows = box.rows_for(viewer).values()
        return MailboxCounts(
            messages=len(box.rows),
            recent=sum(r.recent for r in rows),
            unseen=sum("\\seen" not in r.flags for r in rows),
            uidnext=box.uidnext,
            uidvalidity=box.uidvalidity,
            highestmodseq=box.highestmodseq,
            size=sum(len(r.message.raw) for r in rows),
        )

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        rows = self._box(mailbox_id).rows_for(viewer)
        return [MessageRow(u, r.view(), r.modseq) for u, r in rows.items()]

    def message_uids(self, mailbox_id: int) -> array:
        return array("I", self._box(mailbox_id).rows)

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        box = self._box(mailbox_id)
        who = box.seen_by(viewer)
        first_unseen = next(
            (u for u, r in box.rows.items() if SEEN_KEY not in r.as_seen_by(who).flags), None
        )
        keywords = {
            f for r in box.rows.values() for f in r.flags.values() if not f.startswith("\\")
        }
        return SelectionSummary(
            recent=array("I", [u for u, r in box.rows.items() if r.recent]),
            first_unseen_uid=first_unseen,
            keywords=tuple(sorted(keywords)),
        )

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        box = self._box(mailbox_id)
        rows = box.rows_for(viewer)
        return Changes(
            highestmodseq=box.highestmodseq,
            changed=[
                MessageRow(u, r.view(), r.modseq) for u, r in rows.items() if r.modseq > modseq
            ],
            expunged=sorted(u for u, m in box.expunged.items() if m > modseq),
        )

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        box = self._box(mailbox_id)
        out = []
        for uid in sorted(set(uids)):
            row = box.rows.get(uid)
            if row is None:
                continue
            row = row.as_seen_by(box.seen_by(viewer))
            m = row.message
            out.append(
                MessageInfo(
                    uid=uid,
                    flags=row.view(),
                    modseq=row.modseq,
                    size=len(m.raw),
                    internaldate=m.internaldate,
                    envelope=m.analysis.envelope,
                    bodystructure=m.analysis.bodystructure,
                    body=m.analysis.body,
                    parts=m.analysis.parts,
                    savedate=datetime.datetime.fromtimestamp(row.savedate, datetime.UTC),
                    emailid=email_id(m.digest),
                )
            )
        return out

    def message_summaries(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageSummary]:
        # The reference model: by definition the stored items of message_info.
        return [
            MessageSummary(i.uid, i.flags, i.modseq, i.size, i.envelope, i.bodystructure)
            for i in self.message_info(mailbox_id, uids, viewer=viewer)
        ]

    def message_summary_chunks(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> Iterator[list[MessageSummary]]:
        # The reference model: message_summaries read at once (one snapshot), handed out
        # in lists of SUMMARY_CHUNK, so that callers meet chunk boundaries in tests.
        rows = self.message_summaries(mailbox_id, uids, viewer=viewer)
        for start in range(0, len(rows), SUMMARY_CHUNK):
            yield rows[start : start + SUMMARY_CHUNK]

    def message_flags(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageFlags]:
        # The reference model, as message_summaries: message_info cut to three fields.
        return [
            MessageFlags(i.uid, i.flags, i.modseq)
            for i in self.message_info(mailbox_id, uids, viewer=viewer)
        ]

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        row = self._box(mailbox_id).rows.get(uid)
        if row is None:
            raise KeyError(uid)
        return row.message.raw

    def message_info_with_bytes(
        self, mailbox_id: int, uids: Sequence[int], budget: int, *, viewer: str | None = None
    ) -> tuple[list[MessageInfo], dict[int, bytes]]:
        infos = self.message_info(mailbox_id, uids, viewer=viewer)
        return infos, self.message_bytes_batch(mailbox_id, leading_uids(infos, budget))

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        rows = self._box(mailbox_id).rows
        return {uid: rows[uid].message.raw for uid in uids if uid in rows}

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        given = flag_map(flags)
        box = self._box(mailbox_id)
        message = self._ingest(raw, internaldate)
        (uid,) = self._add(box, [(message, given)], viewer)
        self._notify([mailbox_id])
        return uid

    def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[NewMessage],
        *,
        viewer: str | None = None,
        claim_recent: bool = False,
    ) -> list[int]:
        """RFC 3502 MULTIAPPEND: all checked first, then added together (or none)."""
        prepared = [(self._ingest(m.raw, m.internaldate), flag_map(m.flags)) for m in messages]
        box = self._box(mailbox_id)
        if not prepared:
            return []
        uids = self._add(box, prepared, viewer, not claim_recent)
        self._notify([mailbox_id])
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
        if mode not in ("", "+", "-"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        given = flag_map(flags)
        box = self._box(mailbox_id)
        who = box.seen_by(viewer)
        modified: list[int] = []
        writes: list[tuple[int, Row, dict[str, str]]] = []
        for uid in sorted(set(uids)):
            stored = box.rows.get(uid)
            if stored is None:
                continue
            row = stored.as_seen_by(who)
            if unchangedsince is not None and row.modseq > unchangedsince:
                modified.append(uid)
                continue
            if mode == "":
                new = dict(given)
            elif mode == "+":
                new = {**given, **row.flags}
            else:
                new = {k: v for k, v in row.flags.items() if k not in given}
            if box.shared and who is None:
                new.pop(SEEN_KEY, None)  # nobody's \Seen to change
            if new.keys() != row.flags.keys():
                writes.append((uid, stored, new))
        if not writes:
            return StoreResult(updated=[], modified=modified)
        box.highestmodseq += 1
        modseq = box.highestmodseq
        for _uid, stored, new in writes:
            shared_flags = dict(new)
            if box.shared:
                seen = shared_flags.pop(SEEN_KEY, None) is not None
                if who is not None and seen != (SEEN_KEY in stored.as_seen_by(who).flags):
                    stored.private[who] = (seen, modseq)
            if shared_flags.keys() != stored.flags.keys():
                stored.flags = shared_flags
                stored.modseq = modseq
        self._notify([mailbox_id])
        return StoreResult(
            updated=[
                MessageRow(uid, stored.as_seen_by(who).view(), modseq)
                for uid, stored, _new in writes
            ],
            modified=modified,
        )

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        box = self._box(mailbox_id)
        among = None if uids is None else set(uids)
        gone = [
            u
            for u, r in box.rows.items()
            if "\\deleted" in r.flags and (among is None or u in among)
        ]
        if not gone:
            return []
        self._remove(box, gone)
        self._notify([mailbox_id])
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
        src = self._box(src_mailbox_id)
        dst = self._box(dst_mailbox_id)
        who = src.seen_by(viewer)
        chosen = [(u, src.rows[u].as_seen_by(who)) for u in sorted(set(uids)) if u in src.rows]
        if not chosen:
            return []
        new_uids = self._add(dst, [(row.message, row.flags) for _u, row in chosen], viewer)
        old_uids = [u for u, _row in chosen]
        if move:
            self._remove(src, old_uids)
        self._notify([dst.id, src.id] if move else [dst.id])
        return list(zip(old_uids, new_uids, strict=True))

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        box = self._box(mailbox_id)
        # The SQL translator's checks (caps, Seq keys, unknown operators) are the rules;
        # building the query and discarding it applies exactly the same ones here.
        build_query(mailbox_id, criteria, 0)
        if not box.rows:
            return []
        largest = max(box.rows)
        rows = box.rows_for(viewer)
        return [u for u, r in rows.items() if _matches(criteria, u, r, largest)]

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        box = self._box(mailbox_id)
        claimed = []
        for uid in sorted(set(uids)):
            row = box.rows.get(uid)
            if row is not None and row.recent:
                row.recent = False
                claimed.append(uid)
        return claimed


def _matches(node: Criteria, uid: int, row: Row, largest: int) -> bool:
    """One message against one (already validated) criteria tree, RFC 3501 §6.4.4."""
    m = row.message
    if isinstance(node, All):
        return True
    if isinstance(node, And):
        return all(_matches(k, uid, row, largest) for k in node.keys)
    if isinstance(node, Or):
        return _matches(node.left, uid, row, largest) or _matches(node.right, uid, row, largest)
    if isinstance(node, Not):
        return not _matches(node.key, uid, row, largest)
    if isinstance(node, Flag):
        flag = canonical_flag(node.flag)
        present = row.recent if flag == RECENT else flag.lower() in row.flags
        return present == node.present
    if isinstance(node, Header):
        name, needle = node.field.lower(), node.value.casefold()
        fields = m.addresses if node.address else m.headers
        return any(n == name and needle in v for n, v in fields)
    if isinstance(node, Text):
        needle = node.value.casefold()
        if needle in m.text:
            return True
        return node.where == "TEXT" and needle in "\n".join(m.header_lines)
    if isinstance(node, Date):
        if node.field == "saved":
            day = save_day(row.savedate)
        else:
            day = m.internaldate.date() if node.field == "internal" else m.sent_day
        if node.op == "before":
            return day < node.date
        return day == node.date if node.op == "on" else day >= node.date
    if isinstance(node, Size):
        size = len(m.raw)
        return size > node.size if node.op == "larger" else size < node.size
    if isinstance(node, Uid):
        return node.set.contains(uid, largest)
    if isinstance(node, ModSeq):
        return row.modseq >= node.modseq
    if isinstance(node, Instant):
        epoch = int(m.internaldate.timestamp())
        return epoch < node.epoch if node.op == "before" else epoch >= node.epoch
    if isinstance(node, EmailId):
        return email_id(m.digest) == node.value
    raise ValueError(f"unknown search key {node!r}")
