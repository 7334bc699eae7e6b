"""An in-memory :class:`~gateway.store.interfaces.Store` for fast tests of protocol code.

It follows the same contract as :class:`gateway.store.sqlite.SQLiteStore`, proven by the
shared suite in tests/test_store_contract.py, and shares its rules (mailbox names,
flags, search validation) by importing them, so the two cannot drift apart. Nothing is
durable: :class:`MemoryState` is the whole "file", and passing the same state to a new
:class:`MemoryStore` plays the part of reopening it. Each write validates everything
before it mutates anything, which is what makes it atomic without transactions.
In a shared mailbox (owner ``shared:NAME``) each row keeps its readers' own \\Seen in
``_Row.private`` (user → (seen, modseq)), as SQLite's ``private_flag`` table does.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    Size,
    Text,
    Uid,
)
from gateway.core.flags import RECENT, SPECIAL_USES, canonical_flag
from gateway.message.mime import Analysis, analyze
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    ChangeListener,
    Changes,
    Delivery,
    LedgerEntry,
    Mailbox,
    MailboxCounts,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageInfo,
    MessageRow,
    NewMessage,
    SelectionSummary,
    StoreError,
    StoreResult,
    is_shared_owner,
)
from gateway.store.search import build_query
from gateway.store.sqlite import (
    DEFAULT_FOLDERS,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_UID,
    check_mailbox_name,
    check_message,
    flag_map,
    normalise_name,
    parent_names,
    stored_internaldate,
)

log = structlog.get_logger(__name__)

_SEEN_KEY = "\\seen"


@dataclass(eq=False)
class _Message:
    """Facts computed once at ingest; shared by every copy (deduplication by reference)."""

    raw: bytes
    internaldate: datetime.datetime
    sent_day: datetime.date
    analysis: Analysis
    header_lines: tuple[str, ...]  # case-folded "name: value"
    headers: tuple[tuple[str, str], ...]  # (lower-case name, case-folded value)
    text: str  # case-folded body text


@dataclass(eq=False)
class _Row:
    message: _Message
    flags: dict[str, str]  # lower-case → spelling, without \Recent
    modseq: int
    recent: bool = True
    private: dict[str, tuple[bool, int]] = field(default_factory=dict)
    """In a shared mailbox: user → (own \\Seen, modseq of that user's last change)."""

    def as_seen_by(self, viewer: str | None) -> _Row:
        """This row as ``viewer`` sees it (a copy), or itself without private state."""
        if viewer is None or viewer not in self.private:
            return self
        seen, modseq = self.private[viewer]
        flags = dict(self.flags)
        if seen:
            flags[_SEEN_KEY] = "\\Seen"
        return _Row(self.message, flags, max(self.modseq, modseq), self.recent)

    def view(self) -> frozenset[str]:
        shown = set(self.flags.values())
        if self.recent:
            shown.add(RECENT)
        return frozenset(shown)


@dataclass(eq=False)
class _Box:
    id: int
    owner: str
    name: str
    uidvalidity: int
    special_use: str | None
    uidnext: int = 1
    highestmodseq: int = 1
    rows: dict[int, _Row] = field(default_factory=dict)  # ascending UID (insertion order)
    expunged: dict[int, int] = field(default_factory=dict)  # UID → modseq of removal

    @property
    def shared(self) -> bool:
        return is_shared_owner(self.owner)

    def seen_by(self, viewer: str | None) -> str | None:
        """The viewer whose private flags apply here (None: the shared flags only)."""
        return viewer if self.shared else None

    def rows_for(self, viewer: str | None) -> dict[int, _Row]:
        who = self.seen_by(viewer)
        if who is None:
            return self.rows
        return {uid: row.as_seen_by(who) for uid, row in self.rows.items()}


@dataclass
class MemoryState:
    """Everything a :class:`MemoryStore` holds; hand it to a new store to "reopen"."""

    boxes: dict[int, _Box] = field(default_factory=dict)
    next_mailbox_id: int = 1
    uidvalidity: int = 0
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    ledger: dict[tuple[str, str], LedgerEntry] = field(default_factory=dict)
    ledger_messages: dict[tuple[str, str], _Message] = field(default_factory=dict)
    """The message each delivered ledger row points at (SQLite's ledger.message_id)."""


class MemoryStore:
    """The store contract on plain Python objects; same constructor knobs as SQLiteStore."""

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
        analyze: Callable[[bytes], Analysis] = analyze,
        state: MemoryState | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        self.state = state if state is not None else MemoryState()
        self._clock = clock
        self._analyze = analyze
        self._listeners: list[ChangeListener] = []
        self._closed = False
        if self.state.uidvalidity == 0:
            self.state.uidvalidity = max(1, int(clock()))

    # ---- helpers -----------------------------------------------------------------------

    def _live(self) -> MemoryState:
        if self._closed:
            raise StoreError("store is closed")
        return self.state

    def _box(self, mailbox_id: int) -> _Box:
        box = self._live().boxes.get(mailbox_id)
        if box is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return box

    def _find(self, user: str, name: str) -> _Box | None:
        for box in self._live().boxes.values():
            if box.owner == user and box.name == name:
                return box
        return None

    def _mailbox(self, box: _Box) -> Mailbox:
        return Mailbox(
            id=box.id,
            owner=box.owner,
            name=box.name,
            uidvalidity=box.uidvalidity,
            uidnext=box.uidnext,
            highestmodseq=box.highestmodseq,
            special_use=box.special_use,
            subscribed=(box.owner, box.name) in self.state.subscriptions,
        )

    def _create(self, user: str, name: str, special_use: str | None) -> _Box:
        state = self._live()
        value = max(state.uidvalidity, int(self._clock()), 1)
        if value > MAX_UID:
            raise StoreError("UIDVALIDITY space exhausted")
        state.uidvalidity = value + 1
        box = _Box(state.next_mailbox_id, user, name, value, special_use)
        state.boxes[box.id] = box
        state.next_mailbox_id += 1
        return box

    def _create_parents(self, user: str, name: str) -> None:
        for parent in parent_names(name):
            if self._find(user, parent) is None:
                self._create(user, parent, None)

    def _notify(self, mailbox_ids: Iterable[int]) -> None:
        for mailbox_id in sorted(set(mailbox_ids)):
            for listener in list(self._listeners):
                try:
                    listener(mailbox_id)
                except Exception:
                    log.exception("store.listener_failed", mailbox_id=mailbox_id)

    def _ingest(self, raw: bytes, when: datetime.datetime | None) -> _Message:
        check_message(raw, self.max_message_size)
        now = datetime.datetime.fromtimestamp(int(self._clock())).astimezone()
        when = stored_internaldate(when, now)
        analysis = self._analyze(raw)
        sent_day = when.date()
        if analysis.sent_date is not None:
            sent_day = analysis.sent_date.date()
        headers = tuple((n.lower(), v.casefold()) for n, v in analysis.headers)
        return _Message(
            raw=raw,
            internaldate=when,
            sent_day=sent_day,
            analysis=analysis,
            header_lines=tuple(f"{n.lower()}: {v}".casefold() for n, v in analysis.headers),
            headers=headers,
            text=analysis.text.casefold(),
        )

    def _add(
        self,
        box: _Box,
        entries: Sequence[tuple[_Message, dict[str, str]]],
        viewer: str | None = None,
    ) -> list[int]:
        """New rows; in a shared mailbox \\Seen becomes ``viewer``'s own (or is dropped)."""
        if box.uidnext + len(entries) - 1 > MAX_UID:
            raise StoreError("UID space of the mailbox exhausted")
        box.highestmodseq += 1
        uids = []
        for message, flags in entries:
            row = _Row(message, dict(flags), box.highestmodseq)
            if box.shared and _SEEN_KEY in row.flags:
                del row.flags[_SEEN_KEY]
                if viewer is not None:
                    row.private[viewer] = (True, box.highestmodseq)
            box.rows[box.uidnext] = row
            uids.append(box.uidnext)
            box.uidnext += 1
        return uids

    def _remove(self, box: _Box, uids: Sequence[int]) -> None:
        box.highestmodseq += 1
        for uid in uids:
            del box.rows[uid]
            box.expunged[uid] = box.highestmodseq

    # ---- users and mailboxes -----------------------------------------------------------

    def ensure_user(self, user: str) -> None:
        if self._find(user, INBOX) is not None:
            return
        self._create(user, INBOX, None)
        if is_shared_owner(user):
            return  # a shared tree starts with its INBOX only
        self.state.subscriptions.add((user, INBOX))
        for name, use in DEFAULT_FOLDERS:
            if self._find(user, name) is None:
                self._create(user, name, use)
            self.state.subscriptions.add((user, name))

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        boxes = [b for b in self._live().boxes.values() if b.owner == user]
        boxes.sort(key=lambda b: (b.name != INBOX, b.name))
        return [self._mailbox(b) for b in boxes]

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        box = self._find(user, normalise_name(name))
        if box is None:
            raise MailboxNotFound(name)
        return self._mailbox(box)

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        if self._find(user, name) is not None:
            raise MailboxExists(name)
        self._create_parents(user, name)
        return self._mailbox(self._create(user, name, special_use))

    def delete_mailbox(self, user: str, name: str) -> None:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        box = self._find(user, name)
        if box is None:
            raise MailboxNotFound(name)
        del self.state.boxes[box.id]
        self._notify([box.id])

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        source = self._find(user, old)
        if source is None:
            raise MailboxNotFound(old)
        if self._find(user, new) is not None:
            raise MailboxExists(new)
        if old == INBOX:
            self._create_parents(user, new)
            target = self._create(user, new, None)
            rows = list(source.rows.items())
            changed = [target.id]
            if rows:
                self._add(target, [(row.message, row.flags) for _uid, row in rows])
                self._remove(source, [uid for uid, _row in rows])
                changed.append(source.id)
            self._notify(changed)
            return
        if new.startswith(old + DELIMITER):
            raise MailboxNotAllowed("cannot rename a mailbox into its own child")
        family = sorted(
            (
                b
                for b in self.state.boxes.values()
                if b.owner == user and (b.name == old or b.name.startswith(old + DELIMITER))
            ),
            key=lambda b: b.name,
        )
        moves = [(b, new + b.name[len(old) :]) for b in family]
        for _box, target_name in moves:
            check_mailbox_name(target_name)
            if self._find(user, target_name) is not None:
                raise MailboxExists(target_name)
        for box, target_name in moves:
            if (user, box.name) in self.state.subscriptions:
                self.state.subscriptions.discard((user, box.name))
                self.state.subscriptions.add((user, target_name))
            box.name = target_name
        self._create_parents(user, new)
        self._notify(b.id for b, _ in moves)

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        key = (user, normalise_name(name))
        if subscribed:
            self._live().subscriptions.add(key)
        else:
            self._live().subscriptions.discard(key)

    def subscriptions(self, user: str) -> list[str]:
        return sorted(name for owner, name in self._live().subscriptions if owner == user)

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

    # ---- messages in a mailbox ---------------------------------------------------------

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        rows = self._box(mailbox_id).rows_for(viewer)
        return [MessageRow(u, r.view(), r.modseq) for u, r in rows.items()]

    def message_uids(self, mailbox_id: int) -> array:
        return array("I", self._box(mailbox_id).rows)

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        box = self._box(mailbox_id)
        who = box.seen_by(viewer)
        first_unseen = next(
            (u for u, r in box.rows.items() if _SEEN_KEY not in r.as_seen_by(who).flags), None
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
                )
            )
        return out

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        row = self._box(mailbox_id).rows.get(uid)
        if row is None:
            raise KeyError(uid)
        return row.message.raw

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
        self, mailbox_id: int, messages: Sequence[NewMessage], *, viewer: str | None = None
    ) -> list[int]:
        """RFC 3502 MULTIAPPEND: all checked first, then added together (or none)."""
        prepared = [(self._ingest(m.raw, m.internaldate), flag_map(m.flags)) for m in messages]
        box = self._box(mailbox_id)
        if not prepared:
            return []
        uids = self._add(box, prepared, viewer)
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
        writes: list[tuple[int, _Row, dict[str, str]]] = []
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
                new.pop(_SEEN_KEY, None)  # nobody's \Seen to change
            if new.keys() != row.flags.keys():
                writes.append((uid, stored, new))
        if not writes:
            return StoreResult(updated=[], modified=modified)
        box.highestmodseq += 1
        modseq = box.highestmodseq
        for _uid, stored, new in writes:
            shared_flags = dict(new)
            if box.shared:
                seen = shared_flags.pop(_SEEN_KEY, None) is not None
                if who is not None and seen != (_SEEN_KEY in stored.as_seen_by(who).flags):
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

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> None:
        box = self._box(mailbox_id)
        for uid in uids:
            row = box.rows.get(uid)
            if row is not None:
                row.recent = False

    # ---- POP3 ledger ---------------------------------------------------------------

    def known_uidls(self, upstream: str) -> set[str]:
        return {uidl for up, uidl in self._live().ledger if up == upstream}

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        key = (delivery.upstream, delivery.uidl)
        if key in self._live().ledger:
            return None
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        message = self._ingest(delivery.raw, delivery.internaldate)
        self.ensure_user(owner)
        box = self._find(owner, mailbox)
        if box is None:
            self._create_parents(owner, mailbox)
            box = self._create(owner, mailbox, None)
        (uid,) = self._add(box, [(message, {})])
        size = delivery.size_on_server
        entry = LedgerEntry(
            upstream=delivery.upstream,
            uidl=delivery.uidl,
            state="delivered",
            reason=None,
            fetched_at=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            size=size if size is not None else len(delivery.raw),
        )
        self.state.ledger[key] = entry
        self.state.ledger_messages[key] = message
        self._notify([box.id])
        return uid

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        state = self._live()
        items = list(deliveries)
        ready: list[_Message | None] = [
            None if (d.upstream, d.uidl) in state.ledger else self._ingest(d.raw, d.internaldate)
            for d in items
        ]
        results: list[int | None] = [None] * len(items)
        if all(m is None for m in ready):
            return results
        self.ensure_user(owner)
        box = self._find(owner, mailbox)
        if box is None:
            self._create_parents(owner, mailbox)
            box = self._create(owner, mailbox, None)
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        new: list[tuple[int, _Message]] = []
        for index, (delivery, message) in enumerate(zip(items, ready, strict=True)):
            key = (delivery.upstream, delivery.uidl)
            if message is None or key in state.ledger:
                continue
            if dedup:
                owners = {
                    id(m) for k, m in state.ledger_messages.items() if k[0] != delivery.upstream
                }
                for row in box.rows.values():
                    if id(row.message) in owners and row.message.raw == message.raw:
                        message = row.message
                        break
                else:
                    new.append((index, message))
            else:
                new.append((index, message))
            size = delivery.size_on_server
            state.ledger[key] = LedgerEntry(
                upstream=delivery.upstream,
                uidl=delivery.uidl,
                state="delivered",
                reason=None,
                fetched_at=now,
                size=size if size is not None else len(delivery.raw),
            )
            state.ledger_messages[key] = message
        if new:
            uids = self._add(box, [(m, {}) for _i, m in new])
            for (index, _m), uid in zip(new, uids, strict=True):
                results[index] = uid
            self._notify([box.id])
        return results

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        state = self._live()
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        added = 0
        for uidl in uidls:
            key = (upstream, str(uidl))
            if key in state.ledger:
                continue
            state.ledger[key] = LedgerEntry(
                upstream=upstream,
                uidl=str(uidl),
                state="imported",
                reason=reason,
                fetched_at=now,
                size=None,
            )
            added += 1
        return added

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        old = self._live().ledger.get((upstream, uidl))
        if old is not None and old.state == "delivered":
            return
        self.state.ledger[(upstream, uidl)] = LedgerEntry(
            upstream=upstream,
            uidl=uidl,
            state="skipped",
            reason=reason,
            fetched_at=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            size=None,
        )

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        for uidl in uidls:
            self._live().ledger.pop((upstream, uidl), None)
            self.state.ledger_messages.pop((upstream, uidl), None)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        state = self._live()
        entries = [e for (up, _u), e in state.ledger.items() if up == upstream]
        live = {id(row.message) for box in state.boxes.values() for row in box.rows.values()}
        out = []
        for entry in sorted(entries, key=lambda e: e.uidl):
            message = state.ledger_messages.get((upstream, entry.uidl))
            stored = None
            if entry.state == "delivered":
                stored = message is not None and id(message) in live
            out.append(dataclasses.replace(entry, stored=stored))
        return out

    # ---- notification and lifetime -------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        self._closed = True


def _matches(node: Criteria, uid: int, row: _Row, largest: int) -> bool:
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
        return any(n == name and needle in v for n, v in m.headers)
    if isinstance(node, Text):
        needle = node.value.casefold()
        if needle in m.text:
            return True
        return node.where == "TEXT" and needle in "\n".join(m.header_lines)
    if isinstance(node, Date):
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
    raise ValueError(f"unknown search key {node!r}")
