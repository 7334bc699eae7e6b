"""The contract between the IMAP session core and the command handlers.

A handler is a generator function ``handler(session, command)``: it *yields* untagged
response data as ``bytes`` chunks (each chunk one or more complete response lines, or a
piece of a long one; literals may be split across chunks) and *returns* the
:class:`Reply` that becomes the tagged completion. Yielding lets the server stream a
large FETCH with backpressure: it pulls the next chunk only when the transport wants
more, so 1,000 messages of 1 MB never sit in memory together.

Handlers never touch a transport, a reactor or ``sqlite3``; they talk to
``session.store`` (gateway.store.interfaces.Store) and the session's view of the
selected mailbox. Errors: raise :class:`Refused` for a NO with a response code,
:class:`BadCommand` for a BAD; gateway.store.interfaces.StoreError subclasses are
mapped to response codes by the session in one place; anything else is logged and
answered ``NO [SERVERBUG]`` without the exception text.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.core.criteria import SequenceSet
    from gateway.store.interfaces import Mailbox, Store


@dataclass(frozen=True)
class Reply:
    """The tagged completion: ``status`` OK/NO/BAD, optional response ``code`` (e.g.
    ``"TRYCREATE"``, ``"APPENDUID 38505 3955"``), and human-readable ``text``."""

    status: str
    text: str
    code: str | None = None


def ok(text: str = "done", code: str | None = None) -> Reply:
    return Reply("OK", text, code)


class Refused(Exception):
    """A refused operation → tagged NO [code] text."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class BadCommand(Exception):
    """A command that is syntactically fine but malformed in context → tagged BAD."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


Handler = Generator[bytes, None, Reply]


class SelectedView(Protocol):
    """A session's view of its selected mailbox (RFC 3501 §2.3.1.2).

    ``uids[i]`` is the UID of message sequence number ``i + 1`` *as this client knows
    it*: it only changes when the session reports EXISTS/EXPUNGE, never behind the
    client's back. The view keeps no per-message flags or modseqs (a large mailbox
    selected by many sessions would copy them all): they are read from the store, and
    the view only knows how far the client has been told (``highestmodseq``, plus the
    changes it reported itself through :meth:`note_flags`).
    """

    mailbox: Mailbox  # as it was at SELECT time (id, name, uidvalidity)
    readonly: bool
    uids: Sequence[int]  # ascending (an array('I'))
    recent: Sequence[int]  # UIDs this session shows as \Recent, ascending (RFC 3501 §2.3.2)
    highestmodseq: int  # every flag change up to here has been told to the client

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[int]:
        """UIDs (ascending, existing in the view) named by a sequence set.

        In UID mode ``*`` is the largest UID in the view (RFC 3501 §6.4.8: a range
        ``n:*`` always includes the last message); in sequence mode numbers beyond
        the view raise BadCommand("invalid message sequence number").
        """

    def seq_of(self, uid: int) -> int | None:
        """The message sequence number of ``uid`` in this view, or None."""

    def shown_flags(self, uid: int, stored: frozenset[str]) -> frozenset[str]:
        """The store's flags as this session shows them: ``\\Recent`` is per session
        (RFC 3501 §2.3.2), so it comes from the view, never from the store."""

    def knows(self, uid: int, modseq: int) -> bool:
        """Whether the client has already been told this message's flags as of
        ``modseq`` (so a change at that modseq would be news to it otherwise)."""

    def note_flags(self, uid: int, flags: frozenset[str], modseq: int) -> None:
        """Record that the client has now been told these flags (so that the change is
        not reported a second time by the next catch-up)."""

    def forget(self, gone: Iterable[int]) -> list[tuple[int, int]]:
        """Drop expunged UIDs; ``(seq, uid)`` pairs with the sequence number each had,
        highest first, the order that keeps every reported number valid when replayed
        (RFC 3501 §7.4.1)."""


class Session(Protocol):
    """What handlers may use of the session core."""

    store: Store
    user: str | None
    selected: SelectedView | None
    enabled: set[str]  # capabilities turned on by ENABLE: "CONDSTORE", "QRESYNC", "UTF8=ACCEPT"

    def mailbox_name(self, raw: bytes) -> str:
        """Wire name → store name: modified UTF-7 (or UTF-8 after UTF8=ACCEPT) decoded,
        ``INBOX`` in any case normalised. Raises BadCommand for an undecodable name."""

    def wire_name(self, name: str) -> bytes:
        """Store name → the quoted/literal wire form for LIST, STATUS etc."""

    def condstore_active(self) -> bool:
        """True once CONDSTORE is enabled for this session (RFC 7162 §3.1): MODSEQ then
        appears in FETCH responses caused by flag changes."""
