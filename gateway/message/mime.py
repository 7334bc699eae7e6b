"""Message analysis done once at ingest: ENVELOPE, BODYSTRUCTURE, BODY, part offsets, search text.

FETCH never re-parses a message (RFC 3501 §6.4.5, §7.4.2): :func:`analyze` computes the wire
forms and a JSON part map of byte offsets into the stored bytes, and :func:`section` cuts any
``BODY[section]`` out of those bytes by offset. Bytes are served exactly as stored: nothing here
re-serialises a message, so case, folding and 8-bit bytes survive.

The scanner is our own and works on byte offsets (RFC 5322 §2.1 header/body split, RFC 2046
§5.1.1 boundary delimiters). It is lenient: bare LF line ends, missing close delimiters, missing
boundaries and malformed header fields are tolerated, every input yields an :class:`Analysis`,
and the work is linear in the message size times at most :data:`MAX_NESTING`.

Structural choices, stated once:

* Type, subtype, transfer encoding, parameter and disposition names are sent upper-case (as in
  the RFC 3501 examples); parameter values are sent as they appear.
* A text/* part without a charset parameter is shown with ``("CHARSET" "US-ASCII")``, its
  RFC 2046 §4.1.2 default, as Dovecot does.
* RFC 2231 continuations are merged; an extended value keeps its ``charset'lang'%XX`` form
  under the ``NAME*`` attribute, which IMAP clients decode (as with Dovecot and Cyrus).
* ``message/global`` (RFC 6532) is a basic body in BODY/BODYSTRUCTURE, since RFC 3501's
  grammar (and Dovecot 2.3) gives only message/rfc822 an envelope; its part map still nests,
  so ``N.HEADER``/``N.TEXT``/``N.M`` work as RFC 9051 §6.4.5 numbers them, and its text parts
  are searchable.
* ``lines`` counts line ends, as Dovecot does: a last line cut short by the CRLF that belongs
  to a boundary delimiter is not counted.
* Sizes and lines are of the stored octets: a bare-LF message is not counted as if CRLF.
* A mailbox without a domain gets an empty host string, never NIL: NIL marks group syntax
  (RFC 3501 §7.4.2).
* A multipart without a usable boundary is invalid and falls back to the RFC 2045 §5.2
  default ``text/plain; charset=us-ascii``; a multipart with a boundary but no parts is shown
  with one empty text/plain part, since the grammar requires at least one (RFC 3501 §9 body).
"""

from __future__ import annotations

import binascii
import datetime
import email.utils
import html
import json
import re
from dataclasses import dataclass, field

MAX_NESTING = 48
"""Deepest multipart / message nesting analysed; deeper containers become opaque leaves."""

MAX_PARTS = 5000
"""Most MIME entities analysed per message; containers past it become opaque leaves."""

MAX_TEXT_CHARS = 1 << 20
"""Cap on :attr:`Analysis.text`, in characters (1 MiB), to bound memory per message."""

MAX_TEXT_INPUT = 8 << 20
"""Most encoded octets of one text part fed to the decoders for :attr:`Analysis.text`."""

MAX_CHARSET_NAME = 64
"""Longest charset name looked up; longer names fall back to UTF-8."""

_NIL = b"NIL"
_CRLF = b"\r\n"
_OPAQUE = (b"APPLICATION", b"OCTET-STREAM")


@dataclass(frozen=True)
class Analysis:
    """What FETCH and SEARCH need about one message, computed once at ingest."""

    envelope: bytes  # RFC 3501 §7.4.2 ENVELOPE wire form
    bodystructure: bytes  # BODYSTRUCTURE with extension data
    body: bytes  # BODY, the non-extensible form
    parts: str  # compact JSON part map of byte offsets, consumed by section()
    headers: list[tuple[str, str]]  # (lower-case name, decoded value), top-level, in order
    text: str  # decoded text of the text/* leaves, for SEARCH BODY/TEXT
    sent_date: datetime.datetime | None  # the Date: header, timezone-aware
    message_id: str | None


# --------------------------------------------------------------------------------------------
# Header fields on byte offsets


@dataclass
class _Field:
    """One header field: lower-case name (None for a line with no colon), value offsets."""

    name: str | None
    start: int  # first byte of the field
    value: int  # first byte after the colon (== start for a line with no colon)
    end: int  # one past the field's last line end


_BLANK_LINE = re.compile(rb"\n\r?\n")


def _split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """Return (header_end, body_start) of the entity in raw[start:end].

    The header ends at the first empty line, CRLF or bare LF (RFC 5322 §2.1); the empty
    line belongs to neither fields nor body. With no empty line the whole entity is header.
    """
    if raw.startswith(b"\n", start, end):
        return start, start + 1
    if raw.startswith(b"\r\n", start, end):
        return start, start + 2
    m = _BLANK_LINE.search(raw, start, end)
    if m is None:
        return end, end
    return m.start() + 1, m.end()


def _scan_fields(raw: bytes, start: int, end: int) -> list[_Field]:
    """Split raw[start:end] into header fields; continuation lines (leading SP/HT) are
    kept with the field they fold (RFC 5322 §2.2.3)."""
    fields: list[_Field] = []
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos] in (0x20, 0x09) and fields:
            fields[-1].end = line_end
        else:
            colon = raw.find(b":", pos, line_end)
            if colon < 0:
                fields.append(_Field(None, pos, pos, line_end))
            else:
                name = raw[pos:colon].rstrip(b" \t").decode("latin-1").lower()
                fields.append(_Field(name, pos, colon + 1, line_end))
        pos = line_end
    return fields


_LINE_BREAK = re.compile(rb"\r?\n")


def _unfold(value: bytes) -> bytes:
    """Remove the line breaks of a folded value and trim it (RFC 5322 §2.2.3).

    Most fields are one line whose only line break is its last byte: trimming alone is
    then the same result, without the regex (this runs for every header field at ingest).
    """
    if value.find(b"\n") >= len(value) - 1:
        return value.strip(b" \t\r\n")
    return _LINE_BREAK.sub(b"", value).strip(b" \t\r\n")


def _first_values(raw: bytes, fields: list[_Field]) -> dict[str, bytes]:
    """The unfolded value of the first occurrence of each field name."""
    values: dict[str, bytes] = {}
    for f in fields:
        if f.name is not None and f.name not in values:
            values[f.name] = _unfold(raw[f.value : f.end])
    return values


# --------------------------------------------------------------------------------------------
# IMAP strings


def _nstring(value: bytes | None) -> bytes:
    """An IMAP nstring (RFC 3501 §9): NIL, a quoted string, or a literal when the value has
    8-bit bytes or CR/LF. NUL is not allowed in IMAP4rev1 strings and is dropped."""
    if value is None:
        return _NIL
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    if b"\r" in value or b"\n" in value or not value.isascii():
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# --------------------------------------------------------------------------------------------
# Content-Type style values (RFC 2045 §5.1, RFC 2183, RFC 2231)

_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)", re.S)
_ATTRIBUTE = re.compile(rb"[ \t]*([^=;\s\"]+)[ \t]*(=?)[ \t]*")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"?', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_SECTION = re.compile(rb"^(.*?)\*(\d{1,3})(\*?)$", re.S)
_CTL_AND_SPACE = bytes(range(0x21)) + b"\x7f"
_PCT_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~")


def _strip_comments(value: bytes) -> bytes:
    """Remove (possibly nested) comments outside quoted strings, innermost first."""
    for _ in range(8):
        stripped = _COMMENT.sub(b" ", value)
        if stripped == value:
            break
        value = stripped
    return value


def _split_value(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split ``main; a=b; c="d"`` into the main token and raw (attribute, value) pairs.

    Unquoted values run to the next ``;`` (``boundary=----=_Part`` is common in the wild).
    """
    semi = value.find(b";")
    head = value if semi < 0 else value[:semi]
    main = _strip_comments(head).translate(None, _CTL_AND_SPACE)
    params: list[tuple[bytes, bytes]] = []
    if semi < 0:
        return main, params
    pos = semi + 1
    n = len(value)
    while pos < n:
        m = _ATTRIBUTE.match(value, pos)
        if m is None:
            nxt = value.find(b";", pos)
            pos = n if nxt < 0 else nxt + 1
            continue
        name = m.group(1)
        pos = m.end()
        if not m.group(2):
            nxt = value.find(b";", pos)
            pos = n if nxt < 0 else nxt + 1
            continue
        if value.startswith(b'"', pos):
            q = _QUOTED.match(value, pos)
            assert q is not None  # the pattern matches any text starting with a quote
            val = _QUOTED_PAIR.sub(rb"\1", q.group(1))
            pos = q.end()
            nxt = value.find(b";", pos)
            pos = n if nxt < 0 else nxt + 1
        else:
            nxt = value.find(b";", pos)
            end = n if nxt < 0 else nxt
            val = value[pos:end].strip(b" \t")
            pos = end + 1
        params.append((name, val))
    return main, params


def _pct(value: bytes) -> bytes:
    return b"".join(bytes((c,)) if c in _PCT_SAFE else b"%%%02X" % c for c in value)


def _merge_params(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upper-case attribute names, keep the first of duplicates, merge RFC 2231 §3
    continuations (``name*0*``, ``name*1``...) into one ``NAME`` or ``NAME*`` value."""
    order: list[tuple[bool, bytes]] = []  # (is continued, name) in order of first appearance
    plain: dict[bytes, bytes] = {}
    sections: dict[bytes, dict[int, tuple[bool, bytes]]] = {}
    for name, val in pairs:
        up = name.upper()
        m = _SECTION.match(up)
        if m is not None:
            base = m.group(1)
            if base not in sections:
                sections[base] = {}
                order.append((True, base))
            sections[base].setdefault(int(m.group(2)), (bool(m.group(3)), val))
        elif up not in plain:
            plain[up] = val
            order.append((False, up))
    out: list[tuple[bytes, bytes]] = []
    for continued, name in order:
        if not continued:
            out.append((name, plain[name]))
            continue
        pieces = [piece for _, piece in sorted(sections[name].items())]
        if any(encoded for encoded, _ in pieces):
            joined = b"".join(v if encoded else _pct(v) for encoded, v in pieces)
            if not pieces[0][0]:
                joined = b"''" + joined  # RFC 2231 §4: charset and language come first
            out.append((name + b"*", joined))
        else:
            out.append((name, b"".join(v for _, v in pieces)))
    return out


def _params_wire(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return _NIL
    return b"(" + b" ".join(_nstring(k) + b" " + _nstring(v) for k, v in params) + b")"


def _param(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in params:
        if k == name:
            return v
    return None


# --------------------------------------------------------------------------------------------
# Addresses (RFC 5322 §3.4) for the ENVELOPE (RFC 3501 §7.4.2)

_ADDR_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
  | (?P<q>"(?P<qc>(?:[^"\\]|\\.)*)"?)
  | (?P<d>\[(?:[^\]\\]|\\.)*\]?)
  | (?P<a>[^ \t\r\n()<>@,;:"\[\]]+)
  | (?P<s>.)
    """,
    re.S | re.X,
)

Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _addr_tokens(value: bytes) -> list[tuple[str, bytes]]:
    """Tokens: ("a", atom), ("q", unquoted string), ("d", [literal]), ("c", comment text),
    or (special, special) for one of ``<>@,;:``."""
    tokens: list[tuple[str, bytes]] = []
    pos = 0
    n = len(value)
    while pos < n:
        if value[pos] == 0x28:  # "(" opens a possibly nested comment
            depth = 0
            i = pos
            while i < n:
                c = value[i]
                if c == 0x5C:
                    i += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            text = value[pos + 1 : min(i, n)]
            tokens.append(("c", _QUOTED_PAIR.sub(rb"\1", text).strip()))
            pos = i + 1
            continue
        m = _ADDR_TOKEN.match(value, pos)
        assert m is not None  # the last alternative matches any byte
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "q":
            tokens.append(("q", _QUOTED_PAIR.sub(rb"\1", m.group("qc"))))
        elif kind == "s":
            tokens.append((text.decode("latin-1"), text))
        else:
            tokens.append((kind or "a", text))
    return tokens


def _words(tokens: list[tuple[str, bytes]]) -> list[bytes]:
    return [v for k, v in tokens if k != "c"]


def _addr_spec(tokens: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """(mailbox, host) from the tokens of an addr-spec; host is b"" when missing."""
    words = [(k, v) for k, v in tokens if k != "c"]
    at = next((i for i, (k, _) in enumerate(words) if k == "@"), -1)
    if at < 0:
        return b"".join(v for _, v in words), b""
    local = b"".join(v for _, v in words[:at])
    host = b"".join(v for _, v in words[at + 1 :])
    return local, host


def _parse_addresses(value: bytes) -> list[Address]:
    """Parse an address-list leniently into ENVELOPE address tuples, groups included."""
    tokens = _addr_tokens(value)
    out: list[Address] = []
    in_group = False
    i = 0
    n = len(tokens)
    while i < n:
        phrase: list[tuple[str, bytes]] = []
        comment: bytes | None = None
        angle: list[tuple[str, bytes]] | None = None
        stop = ""
        while i < n:
            kind, text = tokens[i]
            i += 1
            if kind in (",", ";"):
                stop = kind
                break
            if kind == ":" and not in_group and angle is None:
                stop = ":"
                break
            if kind == "c":
                comment = text or comment
            elif kind == "<":
                angle = []
                while i < n and tokens[i][0] != ">":
                    angle.append(tokens[i])
                    i += 1
                i += 1
            elif angle is None:
                phrase.append((kind, text))
        if stop == ":":
            out.append((None, None, b" ".join(_words(phrase)), None))
            in_group = True
            continue
        if angle is not None:
            adl: bytes | None = None
            colon = next((j for j, (k, _) in enumerate(angle) if k == ":"), -1)
            if colon >= 0 and angle and angle[0][0] == "@":
                adl = b"".join(_words(angle[:colon]))
                angle = angle[colon + 1 :]
            mailbox, host = _addr_spec(angle)
            name = b" ".join(_words(phrase)) or comment
            out.append((name, adl, mailbox, host))
        elif _words(phrase):
            mailbox, host = _addr_spec(phrase)
            out.append((comment, None, mailbox, host))
        if stop == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
    if in_group:
        out.append((None, None, None, None))
    return out


def _addresses_wire(value: bytes | None) -> bytes | None:
    """The ENVELOPE address list for a header value, None when absent or empty."""
    if value is None:
        return None
    addrs = _parse_addresses(value)
    if not any(a[2] is not None for a in addrs):
        return None
    return (
        b"("
        + b"".join(
            b"("
            + b" ".join((_nstring(a[0]), _nstring(a[1]), _nstring(a[2]), _nstring(a[3])))
            + b")"
            for a in addrs
        )
        + b")"
    )


def _envelope(values: dict[str, bytes]) -> bytes:
    """ENVELOPE (RFC 3501 §7.4.2) from the unfolded, still-encoded first field values."""
    from_ = _addresses_wire(values.get("from"))
    sender = _addresses_wire(values.get("sender")) or from_
    reply_to = _addresses_wire(values.get("reply-to")) or from_
    items = (
        _nstring(values.get("date")),
        _nstring(values.get("subject")),
        from_ or _NIL,
        sender or _NIL,
        reply_to or _NIL,
        _addresses_wire(values.get("to")) or _NIL,
        _addresses_wire(values.get("cc")) or _NIL,
        _addresses_wire(values.get("bcc")) or _NIL,
        _nstring(values.get("in-reply-to")),
        _nstring(values.get("message-id")),
    )
    return b"(" + b" ".join(items) + b")"


# --------------------------------------------------------------------------------------------
# The entity tree


@dataclass
class _Entity:
    """One MIME entity: offsets into the raw bytes plus the header facts the wire forms need."""

    hs: int  # header start
    he: int  # header fields end (start of the empty line)
    bs: int  # body start
    be: int  # body end
    values: dict[str, bytes]
    ctype: bytes
    csub: bytes
    params: list[tuple[bytes, bytes]]
    kind: str = ""  # "" leaf, "M" multipart, "R" encapsulated message
    children: list[_Entity] = field(default_factory=list)
    inner: _Entity | None = None


class _Budget:
    """Counts entities so that a hostile message cannot make the analysis unbounded."""

    def __init__(self, limit: int) -> None:
        self.left = limit


_DELIM_TAIL = re.compile(rb"[ \t]*(?:\r?\n|\Z)")


def _content_type(
    values: dict[str, bytes], default: tuple[bytes, bytes]
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(TYPE, SUBTYPE, params); absent or invalid → the default (RFC 2045 §5.2)."""
    value = values.get("content-type")
    if value is not None:
        main, pairs = _split_value(value)
        ctype, slash, csub = main.partition(b"/")
        if slash and ctype and csub and b"/" not in csub:
            params = _merge_params(pairs)
            ctype = ctype.upper()
            if ctype == b"TEXT" and _param(params, b"CHARSET") is None:
                params.append((b"CHARSET", b"US-ASCII"))  # RFC 2045 §5.2, RFC 2046 §4.1.2
            return ctype, csub.upper(), params
    if default == (b"TEXT", b"PLAIN"):
        return b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")]
    return default[0], default[1], []


def _parse_entity(
    raw: bytes, start: int, end: int, depth: int, default: tuple[bytes, bytes], budget: _Budget
) -> _Entity:
    budget.left -= 1
    he, bs = _split_header(raw, start, end)
    values = _first_values(raw, _scan_fields(raw, start, he))
    ctype, csub, params = _content_type(values, default)
    ent = _Entity(start, he, bs, end, values, ctype, csub, params)
    is_message = ctype == b"MESSAGE" and csub in (b"RFC822", b"GLOBAL")
    if ctype == b"MULTIPART":
        boundary = _param(params, b"BOUNDARY")
        if not boundary:
            ent.ctype, ent.csub, ent.params = b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")]
        elif depth >= MAX_NESTING or budget.left <= 0:
            ent.ctype, ent.csub = _OPAQUE
        else:
            ent.kind = "M"
            child_default = (b"MESSAGE", b"RFC822") if csub == b"DIGEST" else (b"TEXT", b"PLAIN")
            for cs, ce in _split_multipart(raw, bs, end, b"--" + boundary, budget):
                ent.children.append(_parse_entity(raw, cs, ce, depth + 1, child_default, budget))
    elif is_message:
        if depth >= MAX_NESTING or budget.left <= 0:
            ent.ctype, ent.csub = _OPAQUE
        else:
            ent.kind = "R"
            ent.inner = _parse_entity(raw, bs, end, depth + 1, (b"TEXT", b"PLAIN"), budget)
    return ent


def _split_multipart(
    raw: bytes, start: int, end: int, delim: bytes, budget: _Budget
) -> list[tuple[int, int]]:
    """Ranges of the body parts between ``--boundary`` delimiter lines (RFC 2046 §5.1.1).

    The line break before a delimiter belongs to the delimiter. Preamble and epilogue are
    skipped; a missing close delimiter ends the last part at ``end``. Past the entity
    budget further delimiters are left inside the last part.
    """
    ranges: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while True:
        i = raw.find(delim, pos, end)
        if i < 0:
            break
        if i != start and raw[i - 1] != 0x0A:
            pos = i + 1
            continue
        j = i + len(delim)
        close = raw.startswith(b"--", j, end)
        tail = None if close else _DELIM_TAIL.match(raw, j, end)
        if not close and tail is None:
            pos = i + 1
            continue
        if part_start >= 0:
            if len(ranges) + 1 >= budget.left:
                break  # out of entities: the open part runs to the end
            part_end = i
            if i - 2 >= part_start and raw.startswith(b"\r\n", i - 2, i):
                part_end = i - 2
            elif i - 1 >= part_start and raw[i - 1] == 0x0A:
                part_end = i - 1
            ranges.append((part_start, part_end))
            part_start = -1
        if close:
            break
        assert tail is not None
        part_start = tail.end()
        pos = part_start
    if part_start >= 0:
        ranges.append((part_start, end))
    return ranges


# --------------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)

_EMPTY_BODY = b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'
_EMPTY_BODYSTRUCTURE = _EMPTY_BODY[:-1] + b" NIL NIL NIL NIL)"


def _lines(raw: bytes, start: int, end: int) -> int:
    """Text lines of a body (RFC 3501 body-fld-lines): its line ends."""
    return raw.count(b"\n", start, end)


def _disposition(values: dict[str, bytes]) -> bytes:
    value = values.get("content-disposition")
    if value is None:
        return _NIL
    main, pairs = _split_value(value)
    if not main:
        return _NIL
    return b"(" + _nstring(main.upper()) + b" " + _params_wire(_merge_params(pairs)) + b")"


def _language(values: dict[str, bytes]) -> bytes:
    value = values.get("content-language")
    if value is None:
        return _NIL
    tags = [t.strip() for t in _strip_comments(value).split(b",")]
    tags = [t for t in tags if t]
    if not tags:
        return _NIL
    if len(tags) == 1:
        return _nstring(tags[0])
    return b"(" + b" ".join(_nstring(t) for t in tags) + b")"


def _location(values: dict[str, bytes]) -> bytes:
    """Content-Location with folding white space removed (RFC 2557 §4.4.2)."""
    value = values.get("content-location")
    if value is None:
        return _NIL
    return _nstring(b"".join(value.split()))


def _structure(raw: bytes, ent: _Entity, ext: bool) -> bytes:
    """BODYSTRUCTURE (``ext``) or BODY of one entity."""
    values = ent.values
    if ent.kind == "M":
        kids = b"".join(_structure(raw, c, ext) for c in ent.children)
        if not kids:  # body-type-mpart needs at least one body (RFC 3501 §9)
            kids = _EMPTY_BODYSTRUCTURE if ext else _EMPTY_BODY
        out = b"(" + kids + b" " + _nstring(ent.csub)
        if ext:
            out += b" " + b" ".join(
                (
                    _params_wire(ent.params),
                    _disposition(values),
                    _language(values),
                    _location(values),
                )
            )
        return out + b")"
    cte = values.get("content-transfer-encoding")
    encoding = b"".join(cte.split()).upper() if cte else b""
    fields = (
        _nstring(ent.ctype),
        _nstring(ent.csub),
        _params_wire(ent.params),
        _nstring(values.get("content-id")),
        _nstring(values.get("content-description")),
        _nstring(encoding or b"7BIT"),
        b"%d" % (ent.be - ent.bs),
    )
    out = b"(" + b" ".join(fields)
    if ent.kind == "R" and ent.csub == b"RFC822":
        assert ent.inner is not None
        out += b" " + b" ".join(
            (
                _envelope(ent.inner.values),
                _structure(raw, ent.inner, ext),
                b"%d" % _lines(raw, ent.bs, ent.be),
            )
        )
    elif ent.ctype == b"TEXT":
        out += b" %d" % _lines(raw, ent.bs, ent.be)
    if ext:
        out += b" " + b" ".join(
            (
                _nstring(values.get("content-md5")),
                _disposition(values),
                _language(values),
                _location(values),
            )
        )
    return out + b")"


def _part_map(ent: _Entity) -> list[object]:
    """The JSON part map: ``[hs, he, bs, be]`` for a leaf, ``[hs, he, bs, be, "M", [child...]]``
    for a multipart and ``[hs, he, bs, be, "R", message]`` for an encapsulated message."""
    node: list[object] = [ent.hs, ent.he, ent.bs, ent.be]
    if ent.kind == "M":
        node += ["M", [_part_map(c) for c in ent.children]]
    elif ent.kind == "R" and ent.inner is not None:
        node += ["R", _part_map(ent.inner)]
    return node


# --------------------------------------------------------------------------------------------
# Decoding for SEARCH (RFC 2047, RFC 2045 §6)

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_TAG = re.compile(r"<[^<>]*>")


def _codec(charset: str) -> str:
    """A Python codec name for a MIME charset, UTF-8 when unknown or not a text codec."""
    charset = charset.strip().strip('"').lower()
    if not charset or len(charset) > MAX_CHARSET_NAME or charset in ("us-ascii", "ascii"):
        return "utf-8"
    try:
        b"".decode(charset)
    except (LookupError, ValueError):
        return "utf-8"
    return charset


def _decode_bytes(data: bytes, charset: str) -> str:
    try:
        return data.decode(_codec(charset), "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _text_of_value(value: bytes) -> str:
    """A raw header value as text: UTF-8 (RFC 6532) or else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _b64decode(data: bytes) -> bytes:
    data = _B64_JUNK.sub(b"", data)
    data = data[: len(data) - (len(data) % 4 == 1)]
    data += b"=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return b""


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words; white space between adjacent encoded-words is dropped
    (RFC 2047 §6.2). Malformed words are left as they are."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    last_end = -1
    for m in _ENCODED_WORD.finditer(text):
        gap = text[pos : m.start()]
        if last_end != pos or gap.strip(" \t\r\n"):
            out.append(gap)
        charset = m.group(1).split("*", 1)[0]
        payload = m.group(3).encode("latin-1", "replace")
        if m.group(2) in "bB":
            data = _b64decode(payload)
        else:
            data = binascii.a2b_qp(payload, header=True)
        out.append(_decode_bytes(data, charset))
        pos = last_end = m.end()
    out.append(text[pos:])
    return "".join(out)


def _decoded_header(value: bytes) -> str:
    return _decode_words(_text_of_value(value))


def _leaf_text(raw: bytes, ent: _Entity, limit: int) -> str:
    """Transfer- and charset-decoded text of one text/* leaf, at most ``limit`` characters."""
    data = raw[ent.bs : min(ent.be, ent.bs + MAX_TEXT_INPUT)]
    cte = ent.values.get("content-transfer-encoding", b"").strip().lower()
    if cte == b"base64":
        data = _b64decode(data)
    elif cte == b"quoted-printable":
        data = binascii.a2b_qp(data)
    charset = _param(ent.params, b"CHARSET")
    text = _decode_bytes(data, charset.decode("latin-1") if charset else "")
    if ent.csub == b"HTML":
        text = html.unescape(_TAG.sub(" ", text))
    return text[:limit]


def _collect_text(raw: bytes, root: _Entity) -> str:
    pieces: list[str] = []
    left = MAX_TEXT_CHARS
    stack = [root]
    while stack and left > 0:
        ent = stack.pop()
        if ent.kind == "M":
            stack.extend(reversed(ent.children))
        elif ent.kind == "R" and ent.inner is not None:
            stack.append(ent.inner)
        elif ent.ctype == b"TEXT":
            text = _leaf_text(raw, ent, left)
            pieces.append(text)
            left -= len(text) + 1
    return "\n".join(pieces)[:MAX_TEXT_CHARS]


def _sent_date(value: bytes | None) -> datetime.datetime | None:
    """The Date: header (RFC 5322 §3.3) as an aware datetime; "-0000" is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


# --------------------------------------------------------------------------------------------
# Public API


def analyze(raw: bytes) -> Analysis:
    """Analyse one stored message (RFC 5322 / MIME) for FETCH and SEARCH.

    Never raises for any bytes: malformed structure degrades to the RFC 2045 defaults.
    """
    raw = bytes(raw)
    root = _parse_entity(raw, 0, len(raw), 0, (b"TEXT", b"PLAIN"), _Budget(MAX_PARTS))
    fields = _scan_fields(raw, root.hs, root.he)
    headers = [
        (f.name, _decoded_header(_unfold(raw[f.value : f.end])))
        for f in fields
        if f.name is not None
    ]
    message_id = root.values.get("message-id")
    return Analysis(
        envelope=_envelope(root.values),
        bodystructure=_structure(raw, root, True),
        body=_structure(raw, root, False),
        parts=json.dumps(_part_map(root), separators=(",", ":")),
        headers=headers,
        text=_collect_text(raw, root),
        sent_date=_sent_date(root.values.get("date")),
        message_id=_text_of_value(message_id) if message_id else None,
    )


def _kids(node: list) -> list | None:
    return node[5] if len(node) > 5 and node[4] == "M" else None


def _enter(message: list, num: int) -> list | None:
    """Part ``num`` of a message's body: the N-th body part of a multipart body, or, for a
    non-multipart message, part 1 only, which is the body itself (RFC 3501 §6.4.5)."""
    kids = _kids(message)
    if kids is not None:
        return kids[num - 1] if 1 <= num <= len(kids) else None
    return message if num == 1 else None


def _resolve(root: list, part: tuple[int, ...]) -> list | None:
    """The part-map node for a dotted part number (RFC 3501 §6.4.5).

    Below a message/rfc822 part the numbering continues in the encapsulated message; a part
    that is neither multipart nor message has no sub-parts.
    """
    node = _enter(root, part[0])
    for num in part[1:]:
        if node is None:
            return None
        kids = _kids(node)
        if kids is not None:
            node = kids[num - 1] if 1 <= num <= len(kids) else None
        elif len(node) > 5 and node[4] == "R":
            node = _enter(node[5], num)
        else:
            return None
    return node


def _header_fields(raw: bytes, message: list, names: tuple[str, ...], keep: bool) -> bytes:
    """HEADER.FIELDS (``keep``) or HEADER.FIELDS.NOT: the original field bytes, folding kept,
    in order, then the empty line (RFC 3501 §6.4.5)."""
    wanted = {n.upper() for n in names}
    out: list[bytes] = []
    for f in _scan_fields(raw, message[0], message[1]):
        match = f.name is not None and f.name.upper() in wanted
        if match == keep:
            chunk = raw[f.start : f.end]
            out.append(chunk if chunk.endswith(b"\n") else chunk + _CRLF)
    out.append(_CRLF)
    return b"".join(out)


def _message_section(raw: bytes, message: list, kind: str, fields: tuple[str, ...]) -> bytes:
    if kind == "HEADER":
        return raw[message[0] : message[2]]
    if kind == "TEXT":
        return raw[message[2] : message[3]]
    if kind == "HEADER.FIELDS":
        return _header_fields(raw, message, fields, True)
    if kind == "HEADER.FIELDS.NOT":
        return _header_fields(raw, message, fields, False)
    return b""


def section(
    raw: bytes, parts: str, part: tuple[int, ...], kind: str, fields: tuple[str, ...] = ()
) -> bytes:
    """The exact bytes of ``BODY[section]`` (RFC 3501 §6.4.5), before <partial> slicing.

    ``parts`` is :attr:`Analysis.parts` for these ``raw`` bytes. A section that does not
    exist (no such part; HEADER/TEXT of a part that is not message/rfc822; MIME of the
    whole message) gives b"".
    """
    root = json.loads(parts)
    kind = kind.upper()
    if not part:
        if kind == "":
            return raw
        return _message_section(raw, root, kind, fields)
    node = _resolve(root, part)
    if node is None:
        return b""
    if kind == "":
        return raw[node[2] : node[3]]
    if kind == "MIME":
        return raw[node[0] : node[2]]
    if len(node) > 4 and node[4] == "R":
        return _message_section(raw, node[5], kind, fields)
    return b""
