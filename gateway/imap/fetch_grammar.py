"""The FETCH grammar, RFC 3501 §6.4.5 with RFC 7162 §3.1.4 (CHANGEDSINCE) and §3.2.6 (VANISHED).

Reads the fetch attributes, macros and ``BODY[section]<partial>`` specifiers of
``FETCH sequence-set items [(modifiers)]`` into :mod:`gateway.imap.command` values; the
responses are rendered by :mod:`gateway.imap.fetch_items`.
"""

from __future__ import annotations

import re

from gateway.imap.command import (
    BinarySection,
    BodySection,
    Command,
    Fetch,
    FetchAttr,
    FetchItem,
)
from gateway.imap.reader import LBRACKET, LPAREN, NUMBER_MAX, Reader, Syntax, show

_FETCH_NAME_RE = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_PART_RE = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_SECTION_KIND_RE = re.compile(rb"[A-Za-z.]+")
_FIELD_NAME_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
_FETCH_MODIFIER_RE = re.compile(rb" \((?:CHANGEDSINCE|VANISHED)(?=[ )])", re.IGNORECASE)
"""A fetch-modifier list after the items (RFC 7162 §3.1.4, §3.2.6), not preview modifiers."""

FETCH_ATTRS = frozenset(
    "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE UID RFC822 RFC822.HEADER "
    "RFC822.TEXT MODSEQ SAVEDATE EMAILID THREADID PREVIEW".split()
)
"""RFC 3501 §6.4.5 plain fetch attributes, plus RFC 7162 MODSEQ, RFC 8514 SAVEDATE,
RFC 8474 EMAILID and THREADID, RFC 8970 PREVIEW."""

BINARY_WORDS = {
    "BINARY": (False, False),
    "BINARY.PEEK": (True, False),
    "BINARY.SIZE": (False, True),
}
"""RFC 3516 §4.2 fetch attributes → (peek, size only); each needs a ``[section]``."""

_FAST = ("FLAGS", "INTERNALDATE", "RFC822.SIZE")
FETCH_MACROS = {
    "FAST": _FAST,
    "ALL": (*_FAST, "ENVELOPE"),
    "FULL": (*_FAST, "ENVELOPE", "BODY"),
}
"""RFC 3501 §6.4.5 macros and the attributes they stand for."""

_SECTION_KINDS = frozenset(("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"))


_PARSED_TAILS: dict[
    tuple[bool, bool, int, bytes], tuple[tuple[FetchItem, ...], int | None, bool]
] = {}
"""Parsed fetch items and modifiers by the line's text after the sequence set: a client
sends the same few shapes over and over (mbsync one ``UID FETCH n (BODY.PEEK[])`` per
message; issue 19), so each shape is parsed once. Bounded by :data:`_PARSED_TAILS_MAX`."""
_PARSED_TAILS_MAX = 256


def cmd_fetch(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """FETCH sequence-set items [(modifiers)], RFC 3501 §6.4.5, RFC 7162 §3.1.4 and §3.2.6."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("fetch items")
    tail = r.rest_of_line()
    key = None if tail is None else (uid, r.utf8, r.max_nesting, tail)
    parsed = None if key is None else _PARSED_TAILS.get(key)
    if parsed is None:
        parsed = _fetch_tail(r, uid)
        if key is not None:
            if len(_PARSED_TAILS) >= _PARSED_TAILS_MAX:
                _PARSED_TAILS.clear()
            _PARSED_TAILS[key] = parsed
    else:
        r.skip_line()
    items, changedsince, vanished = parsed
    return Fetch(
        tag=tag,
        name=name,
        uid=uid,
        sequence_set=seqs,
        items=items,
        changedsince=changedsince,
        vanished=vanished,
    )


def _fetch_tail(r: Reader, uid: bool) -> tuple[tuple[FetchItem, ...], int | None, bool]:
    """FETCH's items and modifiers: the items, CHANGEDSINCE (or None), VANISHED."""
    items: list[FetchItem] = []
    if r.peek() == LPAREN:
        r.paren_list(lambda: _fetch_att(r, items, macro_ok=False), "fetch items")
    else:
        _fetch_att(r, items, macro_ok=True)
    changedsince = None
    vanished = False
    if not r.at_end():
        r.sp("fetch modifiers")

        def modifier() -> None:
            nonlocal changedsince, vanished
            word = r.word("a fetch modifier")
            if word == "CHANGEDSINCE":
                r.sp("a mod-sequence")
                changedsince = r.modseq("a mod-sequence", zero_ok=True)
            elif word == "VANISHED":
                vanished = True
            else:
                raise Syntax(f"unknown fetch modifier {show(word.encode())}")

        r.paren_list(modifier, "fetch modifiers")
        if vanished and not uid:
            raise Syntax("VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)")
        if vanished and changedsince is None:
            raise Syntax("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")
    r.finish()
    return tuple(items), changedsince, vanished


def _fetch_att(r: Reader, out: list[FetchItem], macro_ok: bool) -> None:
    m = _FETCH_NAME_RE.match(r.text, r.pos)
    if m is None:
        r.fail("a fetch attribute")
    r.pos = m.end()
    word = m.group().decode("ascii").upper()
    if word in BINARY_WORDS:
        out.append(_binary_section(r, *BINARY_WORDS[word]))
    elif r.peek() == LBRACKET:
        if word not in ("BODY", "BODY.PEEK"):
            raise Syntax(f"unknown fetch attribute {show(m.group())}[")
        out.append(_body_section(r, peek=word == "BODY.PEEK"))
    elif word == "PREVIEW":
        out.append(FetchAttr(word))
        if r.text.startswith(b" (", r.pos) and not _FETCH_MODIFIER_RE.match(r.text, r.pos):
            # RFC 8970 §3.1 preview modifiers. A bare PREVIEW followed by a list is
            # ambiguous in the ABNF (``FETCH * PREVIEW (CHANGEDSINCE 0)``): a list that
            # starts with a fetch modifier is the command's (RFC 7162 §3.1.4), not PREVIEW's.
            r.sp("preview modifiers")
            for mod in r.paren_list(lambda: r.word("a preview modifier"), "preview modifiers"):
                if mod != "LAZY":
                    raise Syntax(f"unknown preview modifier {show(mod.encode())}")
    elif word in FETCH_ATTRS:
        out.append(FetchAttr(word))
    elif word == "BODY.PEEK":
        raise Syntax("BODY.PEEK needs a section, as in BODY.PEEK[]")
    elif word in FETCH_MACROS:
        if not macro_ok:
            raise Syntax(f"the macro {word} cannot be used inside a list")
        out.extend(FetchAttr(a) for a in FETCH_MACROS[word])
    else:
        raise Syntax(f"unknown fetch attribute {show(m.group())}")


fetch_att = _fetch_att
"""One fetch attribute (or macro) into ``out``: also NOTIFY's MessageNew list (RFC 5465 §5.2)."""


def _body_section(r: Reader, peek: bool) -> BodySection:
    """``[section]<origin.count>``, RFC 3501 §6.4.5 and the section grammar of §9."""
    r.expect(b"[", '"["')
    part: tuple[int, ...] = ()
    kind = ""
    fields: tuple[str, ...] = ()
    m = _SECTION_PART_RE.match(r.text, r.pos)
    if m is not None:
        numbers = m.group().split(b".")
        if any(len(n) > 10 or int(n) == 0 or int(n) > NUMBER_MAX for n in numbers):
            raise Syntax("section part numbers are from 1 to 4294967295")
        part = tuple(int(n) for n in numbers)
        r.pos = m.end()
        if r.take(b"."):
            kind = _section_kind(r)
    elif r.peek() != 0x5D:
        kind = _section_kind(r)
        if kind == "MIME":
            raise Syntax("MIME needs a part number, as in BODY[1.MIME]")
    if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        r.sp("a list of header field names")
        fields = tuple(r.paren_list(lambda: _header_field(r), "header field names"))
    r.expect(b"]", '"]" to end the section')
    partial = None
    if r.take(b"<"):
        origin = r.number("a partial origin")
        r.expect(b".", '"." and an octet count')
        count = r.nz_number("a partial octet count")
        r.expect(b">", '">" to end the partial range')
        partial = (origin, count)
    return BodySection(peek=peek, part=part, kind=kind, fields=fields, partial=partial)


def _binary_section(r: Reader, peek: bool, size_only: bool) -> BinarySection:
    """``[section-part]<origin.count>``, RFC 3516 §4.2 (no HEADER/TEXT/MIME; BINARY.SIZE
    takes no partial range)."""
    r.expect(b"[", '"[" (BINARY needs a section, as in BINARY[1])')
    part: tuple[int, ...] = ()
    m = _SECTION_PART_RE.match(r.text, r.pos)
    if m is not None:
        numbers = m.group().split(b".")
        if any(len(n) > 10 or int(n) == 0 or int(n) > NUMBER_MAX for n in numbers):
            raise Syntax("section part numbers are from 1 to 4294967295")
        part = tuple(int(n) for n in numbers)
        r.pos = m.end()
    r.expect(b"]", '"]" to end the section (BINARY takes part numbers only)')
    partial = None
    if not size_only and r.take(b"<"):
        origin = r.number("a partial origin")
        r.expect(b".", '"." and an octet count')
        count = r.nz_number("a partial octet count")
        r.expect(b">", '">" to end the partial range')
        partial = (origin, count)
    return BinarySection(peek=peek, part=part, partial=partial, size_only=size_only)


def _section_kind(r: Reader) -> str:
    m = _SECTION_KIND_RE.match(r.text, r.pos)
    if m is None:
        r.fail("HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME")
    kind = m.group().decode("ascii").upper()
    if kind not in _SECTION_KINDS:
        raise Syntax(f"unknown section {show(m.group())}")
    r.pos = m.end()
    return kind


def _header_field(r: Reader) -> str:
    raw = r.astring("a header field name")
    if _FIELD_NAME_RE.fullmatch(raw) is None:
        raise Syntax(f"invalid header field name {show(raw)}")
    return raw.decode("ascii").upper()
