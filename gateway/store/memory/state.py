"""The memory store's state and base: what the "file" holds, and the steps every write shares.

:class:`MemoryState` is the whole store; passing the same state to a new store plays the
part of reopening it. Each write validates everything before it mutates anything, which
is what makes it atomic without transactions. In a shared mailbox (owner ``shared:NAME``)
each row keeps its readers' own \\Seen in ``Row.private`` (user → (seen, modseq)), as
SQLite's ``private_flag`` table does.
"""

from __future__ import annotations

import datetime
import hashlib
import mmap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from gateway.core.flags import RECENT
from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.message.analysis import Analysis, analyze
from gateway.store.errors import MailboxNotFound, StoreError
from gateway.store.interfaces import ChangeListener, LedgerEntry, Mailbox, is_shared_owner
from gateway.store.memory_queue import MemoryOutboundQueue
from gateway.store.rules import (
    MAX_UID,
    SEEN_KEY,
    check_message,
    parent_names,
    stored_internaldate,
)

log = structlog.get_logger("gateway.store.memory")


@dataclass(eq=False)
class Message:
    """Facts computed once at ingest; shared by every copy (deduplication by reference)."""

    raw: bytes
    internaldate: datetime.datetime
    sent_day: datetime.date
    analysis: Analysis
    header_lines: tuple[str, ...]  # case-folded "name: value"
    headers: tuple[tuple[str, str], ...]  # (lower-case name, case-folded value)
    addresses: tuple[tuple[str, str], ...]  # (name, case-folded parsed From/To/Cc/Bcc)
    text: str  # case-folded body text
    digest: bytes = b""  # SHA-256 of raw (EMAILID, RFC 8474; SQLite's message.sha256)


@dataclass(eq=False)
class Row:
    message: Message
    flags: dict[str, str]  # lower-case → spelling, without \Recent
    modseq: int
    recent: bool = True
    private: dict[str, tuple[bool, int]] = field(default_factory=dict)
    """In a shared mailbox: user → (own \\Seen, modseq of that user's last change)."""
    savedate: int = 0
    """RFC 8514: epoch second the row entered its mailbox (SQLite's mailbox_message.savedate)."""

    def as_seen_by(self, viewer: str | None) -> Row:
        """This row as ``viewer`` sees it (a copy), or itself without private state."""
        if viewer is None or viewer not in self.private:
            return self
        seen, modseq = self.private[viewer]
        flags = dict(self.flags)
        if seen:
            flags[SEEN_KEY] = "\\Seen"
        return Row(
            self.message, flags, max(self.modseq, modseq), self.recent, savedate=self.savedate
        )

    def view(self) -> frozenset[str]:
        shown = set(self.flags.values())
        if self.recent:
            shown.add(RECENT)
        return frozenset(shown)


@dataclass(eq=False)
class Box:
    id: int
    owner: str
    name: str
    uidvalidity: int
    special_use: str | None
    uidnext: int = 1
    highestmodseq: int = 1
    rows: dict[int, Row] = field(default_factory=dict)  # ascending UID (insertion order)
    expunged: dict[int, int] = field(default_factory=dict)  # UID → modseq of removal

    @property
    def shared(self) -> bool:
        return is_shared_owner(self.owner)

    def seen_by(self, viewer: str | None) -> str | None:
        """The viewer whose private flags apply here (None: the shared flags only)."""
        return viewer if self.shared else None

    def rows_for(self, viewer: str | None) -> dict[int, Row]:
        who = self.seen_by(viewer)
        if who is None:
            return self.rows
        return {uid: row.as_seen_by(who) for uid, row in self.rows.items()}


@dataclass
class MemoryState:
    """Everything a :class:`MemoryStore` holds; hand it to a new store to "reopen"."""

    boxes: dict[int, Box] = field(default_factory=dict)
    next_mailbox_id: int = 1
    uidvalidity: int = 0
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    ledger: dict[tuple[str, str], LedgerEntry] = field(default_factory=dict)
    ledger_messages: dict[tuple[str, str], Message] = field(default_factory=dict)
    """The message each delivered ledger row points at (SQLite's ledger.message_id)."""
    known_sources: dict[str, dict[str, float]] = field(default_factory=dict)
    """user → source → last seen (SQLite's known_source table)."""
    duplicates: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """RFC 7352 duplicate IDs: (owner, handle, id) → expiry (SQLite's sieve_duplicate)."""
    outbound: MemoryOutboundQueue = field(default_factory=MemoryOutboundQueue)
    """Outbound mail (SQLite's outbound_queue): Sieve's redirects and vacation replies are
    queued here by routed deliveries, and the demo's submission relay drains it."""


class MemoryBase:
    """The memory store's state and shared steps; same constructor knobs as SQLiteStore."""

    runs_inline = True
    """Plain Python objects: always called on the caller's (the reactor's) thread."""

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

    def _box(self, mailbox_id: int) -> Box:
        box = self._live().boxes.get(mailbox_id)
        if box is None:
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return box

    def _find(self, user: str, name: str) -> Box | None:
        for box in self._live().boxes.values():
            if box.owner == user and box.name == name:
                return box
        return None

    def _mailbox(self, box: Box) -> Mailbox:
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

    def _create(self, user: str, name: str, special_use: str | None) -> Box:
        state = self._live()
        value = max(state.uidvalidity, int(self._clock()), 1)
        if value > MAX_UID:
            raise StoreError("UIDVALIDITY space exhausted")
        state.uidvalidity = value + 1
        box = Box(state.next_mailbox_id, user, name, value, special_use)
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

    def _ingest(self, raw: bytes | mmap.mmap, when: datetime.datetime | None) -> Message:
        check_message(raw, self.max_message_size)
        raw = bytes(raw)  # a spooled message: this backend keeps everything in memory
        now = datetime.datetime.fromtimestamp(int(self._clock())).astimezone()
        when = stored_internaldate(when, now)
        analysis = self._analyze(raw)
        sent_day = when.date()
        if analysis.sent_date is not None:
            sent_day = analysis.sent_date.date()
        headers = tuple((n.lower(), v.casefold()) for n, v in analysis.headers)
        return Message(
            raw=raw,
            internaldate=when,
            sent_day=sent_day,
            analysis=analysis,
            header_lines=tuple(f"{n.lower()}: {v}".casefold() for n, v in analysis.headers),
            headers=headers,
            addresses=tuple((n, v.casefold()) for n, v in analysis.addresses),
            text=analysis.text.casefold(),
            digest=hashlib.sha256(raw).digest(),
        )

    def _add(
        self,
        box: Box,
        entries: Sequence[tuple[Message, dict[str, str]]],
        viewer: str | None = None,
        recent: bool = True,
    ) -> list[int]:
        """New rows, \\Recent unless ``recent`` is false; in a shared mailbox \\Seen
        becomes ``viewer``'s own (or is dropped)."""
        if box.uidnext + len(entries) - 1 > MAX_UID:
            raise StoreError("UID space of the mailbox exhausted")
        box.highestmodseq += 1
        uids = []
        saved = int(self._clock())  # RFC 8514 §3
        for message, flags in entries:
            row = Row(message, dict(flags), box.highestmodseq, recent, savedate=saved)
            if box.shared and SEEN_KEY in row.flags:
                del row.flags[SEEN_KEY]
                if viewer is not None:
                    row.private[viewer] = (True, box.highestmodseq)
            box.rows[box.uidnext] = row
            uids.append(box.uidnext)
            box.uidnext += 1
        return uids

    def _remove(self, box: Box, uids: Sequence[int]) -> None:
        box.highestmodseq += 1
        for uid in uids:
            del box.rows[uid]
            box.expunged[uid] = box.highestmodseq

    # ---- notification and lifetime -------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def close(self) -> None:
        self._closed = True
