"""The search criteria tree: what IMAP SEARCH asks for, in a form the store can answer.

It lives outside both ``imap/`` and ``store/`` because the parser builds it and the
store evaluates it (with its indexes), and neither should import the other.
Sequence-number keys are resolved to UID sets by the IMAP session before the store
sees them, since only the session knows its own sequence-number map.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class SeqRange:
    """One ``a:b`` element of a sequence set; ``None`` stands for ``*``."""

    start: int | None
    end: int | None


@dataclass(frozen=True)
class SequenceSet:
    """RFC 3501 sequence-set, kept symbolic so that ``*`` is resolved late."""

    ranges: tuple[SeqRange, ...]
    saved: bool = False
    """RFC 5182 ``$``: the result saved by ``SEARCH RETURN (SAVE)`` (``ranges`` is then
    empty); only the session knows those UIDs, so it replaces this before the store."""

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Concrete inclusive ranges, ``*`` meaning ``largest``; low <= high in each."""
        out = []
        for r in self.ranges:
            a = largest if r.start is None else r.start
            b = largest if r.end is None else r.end
            out.append((a, b) if a <= b else (b, a))
        return out

    def contains(self, value: int, largest: int) -> bool:
        return any(a <= value <= b for a, b in self.resolve(largest))


@dataclass(frozen=True)
class All:
    pass


@dataclass(frozen=True)
class And:
    keys: tuple[Criteria, ...]


@dataclass(frozen=True)
class Or:
    left: Criteria
    right: Criteria


@dataclass(frozen=True)
class Not:
    key: Criteria


@dataclass(frozen=True)
class Flag:
    """A system flag (``\\Seen``...) or keyword is present (``present``) or absent.

    ``\\Recent`` is a flag here too; NEW and OLD are expanded by the parser.
    """

    flag: str
    present: bool = True


@dataclass(frozen=True)
class Header:
    """Case-insensitive substring of a header field's decoded value.

    FROM, TO, CC, BCC and SUBJECT are Header keys with that field name; an empty
    ``value`` matches every message that has the field at all (RFC 3501 §6.4.4).
    FROM, TO, CC and BCC set ``address``: they match the addresses as parsed (comments,
    folding and quoting removed), as Dovecot does, while ``HEADER From`` matches the
    field's text as written.
    """

    field: str
    value: str
    address: bool = False


@dataclass(frozen=True)
class Text:
    """Case-insensitive substring of the decoded body (``BODY``) or header and body (``TEXT``)."""

    where: str  # "BODY" | "TEXT"
    value: str


@dataclass(frozen=True)
class Date:
    """INTERNALDATE (``field="internal"``) or the Date: header (``"sent"``) compared by day,
    disregarding time and timezone, as RFC 3501 §6.4.4 requires."""

    field: str  # "internal" | "sent" | "saved" (RFC 8514 SAVEDBEFORE/SAVEDON/SAVEDSINCE)
    op: str  # "before" | "on" | "since"
    date: datetime.date


@dataclass(frozen=True)
class Size:
    op: str  # "larger" | "smaller"
    size: int


@dataclass(frozen=True)
class Seq:
    """Message sequence numbers; the IMAP session rewrites this to ``Uid`` before the store."""

    set: SequenceSet


@dataclass(frozen=True)
class Uid:
    set: SequenceSet


@dataclass(frozen=True)
class ModSeq:
    """CONDSTORE ``MODSEQ n``: messages whose modseq is >= n (RFC 7162 §3.1.5)."""

    modseq: int


@dataclass(frozen=True)
class Within:
    """RFC 5032 ``OLDER n`` (``op="older"``) / ``YOUNGER n`` (``"younger"``): INTERNALDATE
    compared with the time of the search. The session rewrites it to :class:`Instant`
    (it owns the clock), so stores never see it."""

    op: str  # "older" | "younger"
    seconds: int


@dataclass(frozen=True)
class Instant:
    """INTERNALDATE before (``op="before"``: strictly earlier) or since (``"since"``: at or
    after) an instant in epoch seconds: what :class:`Within` becomes."""

    op: str  # "before" | "since"
    epoch: int


@dataclass(frozen=True)
class EmailId:
    """RFC 8474 §6 ``EMAILID objectid``: the message whose EMAILID is ``value``."""

    value: str


@dataclass(frozen=True)
class ThreadId:
    """RFC 8474 §6 ``THREADID objectid``: the messages of that thread. Like
    :class:`Within`, the IMAP layer turns it into a UID set (it derives thread ids from
    the store's THREAD facts, gateway/store/objectid.py), so stores never see it."""

    value: str


Criteria = (
    All
    | And
    | Or
    | Not
    | Flag
    | Header
    | Text
    | Date
    | Size
    | Seq
    | Uid
    | ModSeq
    | Within
    | Instant
    | EmailId
    | ThreadId
)
