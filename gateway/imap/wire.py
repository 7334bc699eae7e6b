"""Encoders for the pieces of IMAP server responses (RFC 3501 §4 and §9).

Small, pure functions so that every response writer spells strings, dates, flag lists
and sequence sets the same way, and so that a value a client sent (a mailbox name, a
header) can never break the response syntax: anything a quoted string cannot carry
becomes a literal.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

MAX_QUOTED_LENGTH = 1024
"""Longer strings are sent as literals: cheaper for the client to read, and no
escaping pass over large values."""

_NEEDS_LITERAL_RE = re.compile(rb"[\x00\r\n\x80-\xff]")
_ATOM_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # ASTRING-CHAR
_ESCAPE_RE = re.compile(rb'(["\\])')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def literal(data: bytes) -> bytes:
    """RFC 3501 §4.3 literal: ``{n}`` CRLF and the octets."""
    return b"{%d}\r\n" % len(data) + data


def quote(data: bytes) -> bytes:
    """A quoted string with ``\\`` and ``"`` escaped (RFC 3501 §4.3), or a literal when
    the value holds CR, LF, NUL or 8-bit octets, or is longer than MAX_QUOTED_LENGTH."""
    if len(data) > MAX_QUOTED_LENGTH or _NEEDS_LITERAL_RE.search(data):
        return literal(data)
    return b'"' + _ESCAPE_RE.sub(rb"\\\1", data) + b'"'


_NEEDS_LITERAL_UTF8_RE = re.compile(rb"[\x00\r\n]")


def quote_utf8(data: bytes) -> bytes:
    """:func:`quote` for a connection with UTF8=ACCEPT enabled (RFC 6855 §3: quoted strings
    may then carry UTF-8), for valid UTF-8 ``data``; other values as :func:`quote`."""
    if len(data) > MAX_QUOTED_LENGTH or _NEEDS_LITERAL_UTF8_RE.search(data):
        return literal(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return quote(data)
    return b'"' + _ESCAPE_RE.sub(rb"\\\1", data) + b'"'


def astring(data: bytes) -> bytes:
    """RFC 3501 astring: a bare atom when every octet is an ASTRING-CHAR, else
    :func:`quote`. ``NIL`` is always quoted, since a reader expecting an nstring would
    take the bare word for "no value"."""
    if _ATOM_RE.fullmatch(data) and data.upper() != b"NIL":
        return data
    return quote(data)


def nstring(data: bytes | None) -> bytes:
    """RFC 3501 nstring: ``NIL`` for None, else a string."""
    return b"NIL" if data is None else quote(data)


def format_internaldate(value: datetime.datetime) -> bytes:
    """RFC 3501 date-time, quotes included: ``"17-Jul-1996 02:44:25 -0700"`` with the
    day space-padded (date-day-fixed). A naive datetime is taken as UTC; the offset is
    written in whole minutes."""
    offset = value.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    text = (
        f'"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} '
        f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{hours:02d}{mins:02d}"'
    )
    return text.encode("ascii")


def flag_list(flags: Iterable[str]) -> bytes:
    """RFC 3501 flag-list ``(\\Seen $Label)``; flags are atoms, hence ASCII."""
    return b"(" + " ".join(flags).encode("ascii") + b")"


CODE_TEXT = b"Ok"
"""The human-readable text after a response code that says everything itself (RFC 3501
§7.1: the text is for humans; clients act on the code). RFC 8474's own example text,
also Cyrus's: a SELECT sends several such lines to every client, so they are kept short."""


def highestmodseq(modseq: int) -> bytes:
    """The ``* OK [HIGHESTMODSEQ n]`` untagged response, RFC 7162 §3.1.2.1 (SELECT and the
    first CONDSTORE enabling command)."""
    return b"* OK [HIGHESTMODSEQ %d] %s\r\n" % (modseq, CODE_TEXT)


def sequence_set_text(numbers: Iterable[int]) -> bytes:
    """RFC 3501 sequence-set with ascending runs compressed: ``[1, 2, 3, 5]`` gives
    ``1:3,5``.

    The order is kept, not sorted, because RFC 4315 COPYUID pairs its two sets element
    by element; sort first where order does not matter. Raises ValueError for an empty
    input or a number below 1, neither of which a sequence set can express."""
    parts = []
    start = prev = None
    for n in numbers:
        if n < 1:
            raise ValueError(f"sequence numbers start at 1, got {n}")
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(f"{start}:{prev}" if start != prev else f"{start}")
        start = prev = n
    if start is None:
        raise ValueError("an empty sequence set cannot be written")
    parts.append(f"{start}:{prev}" if start != prev else f"{start}")
    return ",".join(parts).encode("ascii")
