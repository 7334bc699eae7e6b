"""The parsed form of every IMAP command: what ``parser`` emits and ``server`` dispatches on.

Values are already decoded from the wire (astrings to bytes, numbers to int, dates to
datetime), so handlers never see protocol syntax. Mailbox names stay ``bytes`` as sent:
the session decodes them (modified UTF-7, or UTF-8 after ENABLE UTF8=ACCEPT) because
that depends on session state the parser does not own.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from gateway.core.criteria import Criteria, SequenceSet
from gateway.core.sorting import SortCriterion
from gateway.imap.spool import Spooled


@dataclass(frozen=True)
class Command:
    """Base of all commands. ``name`` is the upper-case command word (``"FETCH"``);
    ``uid`` is true for the ``UID`` prefixed forms."""

    tag: str
    name: str
    uid: bool = False


@dataclass(frozen=True)
class Simple(Command):
    """Commands without arguments: CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT
    EXPUNGE NAMESPACE IDLE."""


@dataclass(frozen=True)
class Login(Command):
    user: bytes = b""
    password: bytes = b""


@dataclass(frozen=True)
class Authenticate(Command):
    """``initial_response`` is the SASL-IR argument as sent (base64 text, ``b"="`` for
    an empty response), or None when the client will answer a continuation."""

    mechanism: str = ""
    initial_response: bytes | None = None


@dataclass(frozen=True)
class QResync:
    """RFC 7162 §3.2.5 ``QRESYNC (uidvalidity modseq [known-uids [seq-match]])``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # (known sequence numbers, the UIDs they correspond to)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Select(Command):
    """SELECT and EXAMINE (``name`` tells which)."""

    mailbox: bytes = b""
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True)
class MailboxCommand(Command):
    """One mailbox argument: DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT."""

    mailbox: bytes = b""


@dataclass(frozen=True)
class Create(Command):
    mailbox: bytes = b""
    special_use: tuple[str, ...] = ()  # RFC 6154 CREATE-SPECIAL-USE "(USE (\\Sent))"


@dataclass(frozen=True)
class Rename(Command):
    old: bytes = b""
    new: bytes = b""


@dataclass(frozen=True)
class List(Command):
    """LIST and LSUB (``name`` tells which), with RFC 5258 LIST-EXTENDED options.

    ``selection`` holds upper-case selection options (SUBSCRIBED, REMOTE,
    RECURSIVEMATCH, SPECIAL-USE); ``returns`` holds upper-case return options
    (SUBSCRIBED, CHILDREN, SPECIAL-USE) and ``status_items`` the RFC 5819
    ``RETURN (STATUS (...))`` items. ``patterns`` has one entry for the plain form.
    """

    reference: bytes = b""
    patterns: tuple[bytes, ...] = ()
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False  # the client used LIST-EXTENDED syntax


@dataclass(frozen=True)
class Status(Command):
    mailbox: bytes = b""
    items: tuple[
        str, ...
    ] = ()  # upper-case: MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE


@dataclass(frozen=True)
class CatenatePart:
    """One RFC 4469 §5 ``CATENATE`` part: ``TEXT`` with its literal (``UTF8 (~{n})`` per
    RFC 6855 §4 too), or ``URL`` with the IMAP URL naming an existing message or part."""

    kind: str  # "TEXT" | "URL"
    data: bytes | Spooled


@dataclass(frozen=True)
class AppendMessage:
    flags: tuple[str, ...]
    date: datetime.datetime | None  # timezone-aware
    data: bytes | Spooled
    """The message; a large one stays in its spool file (:mod:`gateway.imap.spool`)."""
    catenate: tuple[CatenatePart, ...] | None = None
    """RFC 4469: the parts to join into the message (``data`` is then empty)."""
    utf8: bool = False
    """RFC 6855 §4: sent as ``UTF8 (~{n})`` (the message may carry UTF-8 headers)."""


@dataclass(frozen=True)
class Append(Command):
    """APPEND; several messages when the client used MULTIAPPEND (RFC 3502)."""

    mailbox: bytes = b""
    messages: tuple[AppendMessage, ...] = ()


@dataclass(frozen=True)
class FetchAttr:
    """A plain fetch attribute: FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE
    UID RFC822 RFC822.HEADER RFC822.TEXT MODSEQ. Macros ALL/FAST/FULL are expanded."""

    name: str


@dataclass(frozen=True)
class BodySection:
    """``BODY[section]<partial>`` and ``BODY.PEEK[...]``.

    ``part`` is the dotted part number as ints (empty for the whole message);
    ``kind`` is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME";
    ``fields`` holds the upper-cased header field names for the HEADER.FIELDS forms;
    ``partial`` is (origin, count) when ``<origin.count>`` was given.
    """

    peek: bool = False
    part: tuple[int, ...] = ()
    kind: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None

    def section_text(self) -> str:
        """The section spec as echoed in the response, e.g. ``1.2.HEADER.FIELDS (FROM)``."""
        parts = [".".join(str(p) for p in self.part)] if self.part else []
        if self.kind:
            parts.append(self.kind)
        text = ".".join(parts)
        if self.kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            text += " (" + " ".join(self.fields) + ")"
        return text

    def response_name(self) -> str:
        """The item name in the FETCH response: ``BODY[...]`` plus ``<origin>`` if partial."""
        name = f"BODY[{self.section_text()}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


@dataclass(frozen=True)
class BinarySection:
    """RFC 3516 ``BINARY[part]<partial>``, ``BINARY.PEEK[...]`` and ``BINARY.SIZE[part]``
    (``size_only``): the part's content with its transfer encoding removed."""

    peek: bool = False
    part: tuple[int, ...] = ()
    partial: tuple[int, int] | None = None
    size_only: bool = False

    def response_name(self) -> str:
        """``BINARY[1.2]<origin>`` or ``BINARY.SIZE[1.2]`` as the response names it (§4.2)."""
        section = ".".join(str(p) for p in self.part)
        if self.size_only:
            return f"BINARY.SIZE[{section}]"
        name = f"BINARY[{section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


FetchItem = FetchAttr | BodySection | BinarySection


@dataclass(frozen=True)
class Fetch(Command):
    sequence_set: SequenceSet = field(default_factory=lambda: SequenceSet(()))
    items: tuple[FetchItem, ...] = ()
    changedsince: int | None = None  # RFC 7162 CHANGEDSINCE modifier
    vanished: bool = False  # RFC 7162 VANISHED modifier (UID FETCH only)


@dataclass(frozen=True)
class Store(Command):
    """STORE; ``mode`` is "" (replace), "+" (add) or "-" (remove)."""

    sequence_set: SequenceSet = field(default_factory=lambda: SequenceSet(()))
    mode: str = ""
    silent: bool = False
    flags: tuple[str, ...] = ()
    unchangedsince: int | None = None


@dataclass(frozen=True)
class Search(Command):
    """SEARCH; ``charset`` is upper-case or None; ``returns`` holds RFC 4731 ESEARCH
    return options (MIN MAX ALL COUNT) or None for the plain form."""

    charset: str | None = None
    criteria: Criteria | None = None
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high (1-based)


@dataclass(frozen=True)
class Sort(Command):
    """SORT (RFC 5256 §3, RFC 5957 display keys); ``returns`` holds RFC 5267 ESORT
    options (MIN MAX ALL COUNT, and ``partial`` for PARTIAL) or None for the plain form."""

    program: tuple[SortCriterion, ...] = ()
    charset: str = "UTF-8"
    criteria: Criteria | None = None
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high (1-based)


@dataclass(frozen=True)
class Thread(Command):
    """THREAD (RFC 5256 §3): ``algorithm`` is REFERENCES or ORDEREDSUBJECT."""

    algorithm: str = "REFERENCES"
    charset: str = "UTF-8"
    criteria: Criteria | None = None


@dataclass(frozen=True)
class Copy(Command):
    """COPY and MOVE (``name`` tells which), plain or UID."""

    sequence_set: SequenceSet = field(default_factory=lambda: SequenceSet(()))
    mailbox: bytes = b""


@dataclass(frozen=True)
class UidExpunge(Command):
    """RFC 4315 ``UID EXPUNGE sequence-set``."""

    sequence_set: SequenceSet = field(default_factory=lambda: SequenceSet(()))


@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...] = ()  # upper-case


@dataclass(frozen=True)
class Id(Command):
    """RFC 2971 ID; None for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None = None


@dataclass(frozen=True)
class SetQuota(Command):
    root: bytes = b""
    limits: tuple[tuple[str, int], ...] = ()


# ---- parser events that are not commands -------------------------------------------


@dataclass(frozen=True)
class NeedData:
    """The parser needs more bytes before it can say anything."""


NEED_DATA = NeedData()


@dataclass(frozen=True)
class ContinuationNeeded:
    """A synchronizing literal ``{n}`` was announced: the server must write ``+ ...``
    before the client sends the bytes (RFC 3501 §7.5)."""

    size: int


@dataclass(frozen=True)
class ParseError:
    """The client sent something the grammar does not allow, or went over a limit.

    ``tag`` is the command's tag when it could be read (reply ``tag BAD ...``), else
    None (reply ``* BAD ...``). ``code`` is an optional response code (e.g. "TOOBIG",
    "LIMIT"). ``fatal`` means the stream cannot be resynchronised: reply ``* BYE`` and
    close. ``status`` is "BAD" for syntax and "NO" for a refused size.
    """

    tag: str | None
    message: str
    code: str | None = None
    fatal: bool = False
    status: str = "BAD"


@dataclass(frozen=True)
class RawLine:
    """One line read in raw mode (IDLE's ``DONE``, an AUTHENTICATE response), without CRLF."""

    data: bytes


Event = Command | NeedData | ContinuationNeeded | ParseError | RawLine
