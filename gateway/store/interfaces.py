"""The storage contract: everything the IMAP server and the POP3 fetcher may ask of a store.

Protocol code depends on this module only, never on ``sqlite3`` (STYLE.md habit 5).
Calls are synchronous and short: SQLite in WAL mode answers an indexed query in
microseconds, and the longest write (one delivered message) is bounded by the
configured maximum message size. Every write is one transaction; when a method
returns, its effect is durable and visible to every other caller.

Names: mailbox names are ``str`` with ``/`` as the hierarchy delimiter, already
decoded from the wire and normalised by the caller (``INBOX`` always upper-case).
Every mailbox change (append, flag change, expunge) increments the mailbox's
``highestmodseq`` and stamps the rows it touched with the new value, which is what
lets sessions catch up cheaply (RFC 7162) and lets listeners be told.

Shared mailboxes (households): a mailbox whose owner starts with
:data:`SHARED_OWNER_PREFIX` (``"shared:family"``) is read by several users. In it, the
flags in :data:`PRIVATE_FLAGS` (only ``\\Seen``) are kept per *viewer*: the methods that
return or change flags take an optional ``viewer`` keyword (the logged-in user). With a
viewer, a shared mailbox shows that viewer's own \\Seen, and a message's modseq is the
larger of its shared modseq and the modseq of the viewer's last private change (both
come from the one mailbox counter, so CHANGEDSINCE stays exact per member). Without a
viewer, or in a mailbox that is not shared, ``viewer`` changes nothing.
"""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.core.criteria import Criteria

INBOX = "INBOX"
DELIMITER = "/"
SHARED_OWNER_PREFIX = "shared:"
"""Owners of shared mailbox trees are ``shared:NAME``; no user name contains a colon."""
PRIVATE_FLAGS = frozenset({"\\Seen"})
"""Flags kept per viewer in shared mailboxes (see the module docstring)."""


def is_shared_owner(owner: str) -> bool:
    """True for the pseudo-owner of a shared mailbox tree."""
    return owner.startswith(SHARED_OWNER_PREFIX)


class StoreError(Exception):
    """Base of the typed storage errors; the IMAP layer maps each to one response code."""


class MailboxNotFound(StoreError):
    """→ NO [NONEXISTENT] (or [TRYCREATE] for APPEND/COPY/MOVE targets)."""


class MailboxExists(StoreError):
    """→ NO [ALREADYEXISTS]."""


class MailboxNotAllowed(StoreError):
    """The operation is not allowed on this mailbox (delete INBOX, bad name) → NO [CANNOT]."""


class OverQuota(StoreError):
    """→ NO [OVERQUOTA]."""


class MessageTooLarge(StoreError):
    """→ NO [TOOBIG]."""


@dataclass(frozen=True)
class Mailbox:
    id: int
    owner: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None  # RFC 6154 attribute such as "\\Sent", or None
    subscribed: bool


@dataclass(frozen=True)
class MessageRow:
    """A message as it stands in one mailbox: enough to keep a session's view."""

    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(frozen=True)
class MessageInfo:
    """Per-message facts computed once at ingest, served by FETCH without re-parsing.

    ``envelope``, ``bodystructure`` and ``body`` are the exact IMAP wire forms
    (RFC 3501 §7.4.2) of ENVELOPE, BODYSTRUCTURE (with extension data) and BODY.
    ``parts`` is the JSON part map from :func:`gateway.message.analysis.analyze` that lets a
    ``BODY[section]`` be cut out of the raw bytes by offset.
    """

    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    internaldate: datetime.datetime  # timezone-aware
    envelope: bytes
    bodystructure: bytes
    body: bytes
    parts: str


@dataclass(frozen=True)
class SelectionSummary:
    """What SELECT reports besides the UIDs (RFC 3501 §6.3.1), found by aggregate
    queries so that selecting a large mailbox builds no object per message."""

    recent: array  # array('I'): UIDs with \Recent, ascending
    first_unseen_uid: int | None  # the lowest UID without the viewer's \Seen
    keywords: tuple[str, ...]  # keywords set on some message, sorted


@dataclass(frozen=True)
class MailboxCounts:
    """STATUS figures, always from the store, never a session's possibly stale view."""

    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int


@dataclass(frozen=True)
class Changes:
    """What changed in a mailbox after ``since``: new or re-flagged rows (ascending UID)
    and expunged UIDs (ascending). ``highestmodseq`` is the value to catch up to."""

    highestmodseq: int
    changed: list[MessageRow]
    expunged: list[int]


@dataclass(frozen=True)
class StoreResult:
    """Outcome of a STORE: rows whose flags were written (with new modseq) and, under
    UNCHANGEDSINCE, UIDs refused because they changed meanwhile (RFC 7162 MODIFIED)."""

    updated: list[MessageRow]
    modified: list[int]


@dataclass(frozen=True)
class NewMessage:
    """One message for :meth:`Store.append_many`: the bytes, the flags to set and the
    INTERNALDATE (None: now), as one APPEND argument carries them (RFC 3501 §6.3.11)."""

    raw: bytes
    flags: tuple[str, ...] = ()
    internaldate: datetime.datetime | None = None


@dataclass(frozen=True)
class Delivery:
    """One fetched message and its ledger key, committed together (exactly-once)."""

    upstream: str
    uidl: str
    raw: bytes
    internaldate: datetime.datetime | None = None
    size_on_server: int | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """One POP3 ledger row: what the fetcher did with an upstream UIDL and when, so that
    policies such as "delete upstream N days after fetching" can be applied later."""

    upstream: str
    uidl: str
    state: str  # "delivered" | "skipped" | "imported" (known from another fetcher's state)
    reason: str | None  # why it was skipped; None when delivered
    fetched_at: datetime.datetime  # timezone-aware (UTC)
    size: int | None  # size on the server if known, else size received
    stored: bool | None = None
    """For "delivered": whether the message still exists in some mailbox of the store
    (False once the user expunged every copy); None for other states or when unknown."""


ChangeListener = Callable[[int], None]
"""Called with a mailbox id after a committed change to that mailbox."""


class Store(Protocol):
    # ---- users and mailboxes ---------------------------------------------------
    def ensure_user(self, user: str) -> None:
        """Create the user's INBOX (and default special-use folders) if missing."""

    def list_mailboxes(self, user: str) -> list[Mailbox]: ...

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        """Raises MailboxNotFound."""

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        """Creates missing parents too (RFC 3501 §6.3.3). Raises MailboxExists."""

    def delete_mailbox(self, user: str, name: str) -> None:
        """Raises MailboxNotFound, MailboxNotAllowed (INBOX)."""

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """Renames children too; renaming INBOX moves its messages into a new mailbox
        and leaves INBOX empty (RFC 3501 §6.3.5). Each mailbox keeps its UIDVALIDITY
        except the new one made from INBOX."""

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None: ...

    def subscriptions(self, user: str) -> list[str]:
        """Subscribed names, including ones whose mailbox no longer exists."""

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        """UNSEEN counts ``viewer``'s own \\Seen in a shared mailbox."""

    # ---- messages in a mailbox -------------------------------------------------
    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        """Every message in ascending UID order: a session's initial view."""

    def message_uids(self, mailbox_id: int) -> array:
        """Every UID in ascending order as ``array('I')`` (4 bytes a message): a
        session's sequence-number map, without a row object per message. Raises
        MailboxNotFound."""

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        """\\Recent UIDs, the first unseen UID (``viewer``'s own \\Seen in a shared
        mailbox) and the keywords in use, for SELECT. Raises MailboxNotFound."""

    def changes_since(
        self, mailbox_id: int, modseq: int, *, viewer: str | None = None
    ) -> Changes: ...

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        """Rows for those UIDs that still exist, ascending UID."""

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        """The message exactly as received. Raises KeyError if expunged."""

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        """Several messages exactly as received, read at once (one query, not one per
        message): UID → bytes for those UIDs that still exist. The caller bounds the
        total size (FETCH asks for a few MB at a time). Raises MailboxNotFound."""

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        """Adds a message; returns its UID. Raises MailboxNotFound, MessageTooLarge, OverQuota."""

    def append_many(
        self, mailbox_id: int, messages: Sequence[NewMessage], *, viewer: str | None = None
    ) -> list[int]:
        """Adds several messages in one transaction (RFC 3502 MULTIAPPEND is atomic):
        all are stored, with consecutive UIDs in the given order, or none is (the error
        is raised and nothing changed). Raises what :meth:`append` raises."""

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
        """``mode`` is "" (replace), "+" (add) or "-" (remove). Rows whose flags do not
        change keep their modseq and are not in ``updated``."""

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Removes messages flagged \\Deleted (only among ``uids`` when given);
        returns their UIDs ascending and remembers them for QRESYNC."""

    def copy(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        move: bool = False,
        *,
        viewer: str | None = None,
    ) -> list[tuple[int, int]]:
        """Copies (or atomically moves) messages; returns (source uid, new uid) pairs.
        The flags that go along are those ``viewer`` sees in the source."""

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        """UIDs matching, ascending. ``Seq`` keys must already be rewritten to ``Uid``."""

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> None:
        """The session that saw these as \\Recent claims them (RFC 3501 §2.3.2)."""

    # ---- POP3 ledger -----------------------------------------------------------
    def known_uidls(self, upstream: str) -> set[str]:
        """UIDLs already delivered, deliberately skipped or imported for this upstream."""

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        """Stores the message and records its UIDL in one durable transaction.
        Returns the new UID, or None if the UIDL was already known (nothing written)."""

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        """Like :meth:`deliver` for several messages in ONE durable transaction (fast
        bulk import: one fsync per batch): all are committed, or none. Returns, per
        delivery, the new UID or None when nothing was added to the mailbox: the UIDL was
        already known, or (``dedup``) the mailbox already holds the same bytes delivered
        through another upstream, in which case the ledger row is still written and
        points at that message."""

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        """Remembers a UIDL that will not be fetched (e.g. too large), so status shows it."""

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        """Records UIDLs another fetcher already downloaded (state "imported": known,
        never fetched, never deleted upstream) in one transaction; UIDLs already in the
        ledger are left alone. Returns how many were added."""

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        """Drops ledger entries the upstream no longer lists."""

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        """Every ledger row of this upstream, ordered by UIDL."""

    # ---- notification and lifetime ---------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None: ...

    def remove_listener(self, listener: ChangeListener) -> None: ...

    def close(self) -> None: ...
