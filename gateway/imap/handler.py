"""The contract between the IMAP session core and the command handlers.

A handler is a generator function ``handler(session, command)``: it *yields* untagged
response data as ``bytes`` chunks (each chunk one or more complete response lines, or a
piece of a long one; literals may be split across chunks) and *returns* the
:class:`Reply` that becomes the tagged completion. Yielding lets the server stream a
large FETCH with backpressure: it pulls the next chunk only when the transport wants
more, so 1,000 messages of 1 MB never sit in memory together. Where a handler needs the
outside world it yields an *action* instead (:class:`RunBlocking`, :class:`ReadLine`,
:class:`WaitIdle`, :class:`Pause`) and is resumed with the outcome; the transport glue in
:mod:`gateway.imap.server` performs it.

Handlers never change the session's state themselves (RFC 3501 §3, STYLE.md habit 3):
they call the transitions :class:`Session` offers (``log_in``, ``select``, ``deselect``,
``log_out``, ``enable``, ...), which :mod:`gateway.imap.session` alone implements.

Handlers never touch a transport, a reactor or ``sqlite3``; they talk to
``session.store`` (gateway.store.interfaces.Store) and the session's view of the
selected mailbox. Errors: raise :class:`Refused` for a NO with a response code,
:class:`BadCommand` for a BAD; gateway.store.interfaces.StoreError subclasses are
mapped to response codes by the session in one place; anything else is logged and
answered ``NO [SERVERBUG]`` without the exception text.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.access.households import UserStore
    from gateway.core.criteria import SequenceSet
    from gateway.imap.capabilities import Situation
    from gateway.security.auth import Authenticator
    from gateway.store.interfaces import Mailbox, Store

MAX_LOGGED_NAME = 128
"""A name chosen by the client (user, ID fields) is cut to this many characters in logs."""


def logged(name: str) -> str:
    """Client-chosen text as it may appear in a log event: bounded."""
    return name[:MAX_LOGGED_NAME]


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


class SessionRevoked(Exception):
    """The session may not go on: the user's account was deleted, or the selected
    mailbox is no longer theirs to use (a reload took them out of its household). The
    session core answers ``* BYE`` and closes (see :meth:`Session.check_access`)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


# ---- actions: what a handler asks the transport glue to do -----------------------------


@dataclass(frozen=True)
class RunBlocking:
    """Run ``call`` off the reactor thread (password hashing); the generator is resumed
    with its result, or the exception is thrown into it."""

    call: Callable[[], Any]
    login: str | None = None
    """Set (to the user name given) when ``call`` checks a password: the glue then
    applies the login penalty, failure budgets and connection limit around it."""


@dataclass(frozen=True)
class ReadLine:
    """Write ``prompt`` (a continuation request) and resume with the client's next line,
    read raw (RFC 3501 §6.2.2 AUTHENTICATE responses)."""

    prompt: bytes


class IdleEvent(enum.Enum):
    """What may end a :class:`WaitIdle` besides a line from the client."""

    CHANGED = "changed"  # the selected mailbox changed (RFC 2177: tell the client now)
    KEEPALIVE = "keepalive"  # time for ``* OK Still here``
    ACCESS = "access"  # a reload changed accounts or households: check access now


@dataclass(frozen=True)
class WaitIdle:
    """IDLE waits: resume with the client's next raw line (``bytes``) or an IdleEvent."""


@dataclass(frozen=True)
class Pause:
    """Let the reactor serve other connections and timers, then resume (with ``None``).

    Output chunks alone do not give the reactor a turn while the client keeps reading,
    so a handler with a long stretch of work (LIST over thousands of names) yields this
    between chunks of it: no single command may hold the gateway (issue 20)."""


@dataclass(frozen=True)
class StartTLS:
    """Discard buffered plaintext input and start TLS (RFC 3501 §6.2.1)."""


@dataclass(frozen=True)
class StartCompress:
    """Compress both directions from the octet after the tagged OK (RFC 4978 §3)."""


@dataclass(frozen=True)
class Close:
    """Close the connection once everything written so far has been sent."""


Action = RunBlocking | ReadLine | WaitIdle | Pause | StartTLS | StartCompress | Close
Output = bytes | Action
Run = Generator[Output, Any, None]
"""What the session core gives the transport glue for one command."""

Handler = Generator[Output, Any, Reply]
"""A command handler: yields response bytes and actions, is resumed with each action's
outcome, returns the tagged :class:`Reply`."""


# ---- what handlers see --------------------------------------------------------------------


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
    saved: Sequence[int]  # RFC 5182 saved search result ("$"), UIDs ascending
    contexts: dict[str, Any]  # RFC 5267 live search contexts by tag (gateway.imap.contexts)
    claimed: set[int]  # new UIDs whose \Recent this session took at APPEND, not yet told

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[int]:
        """UIDs (ascending, existing in the view) named by a sequence set.

        In UID mode ``*`` is the largest UID in the view (RFC 3501 §6.4.8: a range
        ``n:*`` always includes the last message); in sequence mode numbers beyond
        the view raise BadCommand("invalid message sequence number").
        """

    def seq_of(self, uid: int) -> int | None:
        """The message sequence number of ``uid`` in this view, or None."""

    def save_result(self, uids: Iterable[int]) -> None:
        """Replace the RFC 5182 saved search result."""

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
    """What handlers may use of the session core: facts, the store, and the transitions.

    Attributes are read-only for handlers; every change of state goes through a method
    here, implemented by :class:`gateway.imap.session.IMAPSession`.
    """

    store: Store  # after login, the user's view of the store (UserStore)
    user: str | None
    selected: SelectedView | None
    peer: str
    authenticator: Authenticator
    tls_active: bool
    tls_available: bool
    compress_active: bool  # COMPRESS=DEFLATE is on (RFC 4978)
    whole_literals: bool  # the server sends chunks uncopied: a long literal may go whole
    utf8_available: bool  # UTF8=ACCEPT may be enabled (RFC 6855)
    sent_append: Any  # SentAppendHook | None: one copy of a sent message (APPEND)
    notifier: Any  # gateway.imap.notify.Notifier | None: NOTIFY (RFC 5465)

    @property
    def enabled(self) -> Set[str]:
        """Capabilities turned on by ENABLE or implicitly: "CONDSTORE", "QRESYNC",
        "UTF8=ACCEPT"."""

    def situation(self) -> Situation:
        """The facts the CAPABILITY list and LOGIN policy depend on."""

    def capability_text(self) -> str:
        """The CAPABILITY list for this connection right now (RFC 3501 §7.2.1)."""

    def mailbox_name(self, raw: bytes) -> str:
        """Wire name → store name: modified UTF-7 (or UTF-8 after UTF8=ACCEPT) decoded,
        ``INBOX`` in any case normalised. Raises BadCommand for an undecodable name."""

    def wire_name(self, name: str) -> bytes:
        """Store name → the quoted/literal wire form for LIST, STATUS etc."""

    def condstore_active(self) -> bool:
        """True once CONDSTORE is enabled for this session (RFC 7162 §3.1): MODSEQ then
        appears in FETCH responses caused by flag changes."""

    def user_store(self, user: str) -> UserStore:
        """The store as ``user`` sees it (personal and shared namespaces, own \\Seen)."""

    def check_access(self) -> None:
        """Raise :class:`SessionRevoked` when the logged-in user's account is gone or the
        selected mailbox is no longer reachable for them (checked against the current
        config before every command, and by IDLE when a reload happens)."""

    def notifications(self, *, idling: bool = False) -> Iterator[Output]:
        """Changes told without a command: IDLE (RFC 2177) and NOTIFY (RFC 5465)."""

    def catch_up(self, *, allow_expunge: bool, uid_form: bool = False) -> Iterable[bytes]:
        """The untagged responses telling the client what changed in the selected mailbox
        (RFC 3501 §7); IDLE sends them as changes happen (RFC 2177)."""

    # -- transitions (RFC 3501 §3) --

    def log_in(self, user: str) -> None:
        """Not authenticated → authenticated as ``user`` (canonical name)."""

    def select(self, view: SelectedView) -> None:
        """Authenticated → selected, with ``view`` as the selected mailbox."""

    def deselect(self) -> None:
        """Selected → authenticated, without expunging."""

    def log_out(self) -> None:
        """Any state → logout; the connection closes after the tagged reply."""

    def begin_tls(self) -> None:
        """Start TLS right after the tagged reply (RFC 3501 §6.2.1)."""

    def begin_compress(self) -> None:
        """Compress both directions right after the tagged OK (RFC 4978 §3)."""

    def enable(self, capabilities: Iterable[str]) -> list[str]:
        """ENABLE (RFC 5161): turn capabilities on; those newly enabled, in order."""

    def set_notifier(self, notifier: Any) -> None:
        """NOTIFY SET (a :class:`gateway.imap.notify.Notifier`) or NONE (None), RFC 5465."""

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1): CONDSTORE is on from now."""
