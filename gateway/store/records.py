"""The values the mail store contract (:mod:`gateway.store.interfaces`) takes and returns:
a mailbox, a message as a session's view keeps it and as FETCH serves it, what SELECT,
STATUS and catch-up report, a STORE's outcome, a message to append.

Frozen dataclasses, so a backend can hand out one object to several callers; the
contract re-exports them, and callers import them from there.
"""

from __future__ import annotations

import datetime
import mmap
from array import array
from dataclasses import dataclass
from typing import NamedTuple


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


class MessageInfo(NamedTuple):
    """Per-message facts computed once at ingest, served by FETCH without re-parsing.

    ``envelope``, ``bodystructure`` and ``body`` are the exact IMAP wire forms
    (RFC 3501 §7.4.2) of ENVELOPE, BODYSTRUCTURE (with extension data) and BODY.
    ``parts`` is the JSON part map from :func:`gateway.message.analysis.analyze` that lets a
    ``BODY[section]`` be cut out of the raw bytes by offset.

    A named tuple rather than a frozen dataclass: ``FETCH 1:*`` builds one per message,
    and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost
    several times a tuple's construction (issue 19). Immutable all the same.
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
    savedate: datetime.datetime | None = None
    """RFC 8514: when the message entered this mailbox (UTC); None from a backend that
    cannot tell (FETCH SAVEDATE then answers NIL)."""
    emailid: str | None = None
    """RFC 8474 §5.1 EMAILID (:mod:`gateway.store.objectid`); None: not known."""


class MessageSummary(NamedTuple):
    """What the stored FETCH items need of a message: FLAGS, UID, MODSEQ, RFC822.SIZE,
    ENVELOPE and BODYSTRUCTURE (RFC 3501 §6.4.5, RFC 7162 §3.1.4), the items of a
    client's first sync (``FETCH 1:*`` over the whole mailbox).

    :class:`MessageInfo` without the columns only other items read (INTERNALDATE,
    SAVEDATE, EMAILID, the BODY form, the part map): a store builds no ``datetime`` and
    no EMAILID per message for it and reads two fewer blobs (issue 19). Each field means
    what the one of the same name in :class:`MessageInfo` does.
    """

    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    envelope: bytes
    bodystructure: bytes


class MessageFlags(NamedTuple):
    """What ``FETCH 1:* (UID FLAGS)`` needs of a message, the flag resync every client
    (mbsync, Thunderbird, K-9) runs on each sync: the first three fields of
    :class:`MessageSummary`, so one response template fills from either. A store reads
    them from its per-mailbox rows alone, with no join to the message (issue 19)."""

    uid: int
    flags: frozenset[str]
    modseq: int


class MessageHead(NamedTuple):
    """What a client's list view asks of a message: ``FETCH n:m (UID FLAGS RFC822.SIZE
    BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])`` (RFC 3501 §6.4.5). The first four
    fields are :class:`MessageSummary`'s; ``fields`` is the exact ``BODY[HEADER.FIELDS
    (...)]`` of the whole message for the names asked (the field lines as received,
    folding kept, then the empty line), which a store may keep once cut (issue 19)."""

    uid: int
    flags: frozenset[str]
    modseq: int
    size: int
    fields: bytes


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
    unchanged: list[MessageFlags] | None = None
    """The other requested messages as the STORE read them under its lock, in UID order,
    when the backend has them at hand (PostgreSQL: saves the round trip that would read
    their flags again for the untagged FETCH, RFC 3501 §6.4.6); None: read them."""


@dataclass(frozen=True)
class NewMessage:
    """One message for :meth:`Store.append_many`: the bytes, the flags to set and the
    INTERNALDATE (None: now), as one APPEND argument carries them (RFC 3501 §6.3.11).

    ``raw`` may be a read-only ``mmap`` of a spooled file instead of ``bytes`` (a large
    APPEND, issue 20): a backend must then not keep more than one transient copy of it in
    memory (SQLite writes it with incremental blob I/O); the caller closes the map
    after the call."""

    raw: bytes | mmap.mmap
    flags: tuple[str, ...] = ()
    internaldate: datetime.datetime | None = None
