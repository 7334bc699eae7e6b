"""The MIME entity tree and its BODY / BODYSTRUCTURE wire forms (RFC 3501 §7.4.2, RFC 9051
§7.5.2), plus the JSON part map that :mod:`gateway.message.sections` cuts by.

The scanner works on byte offsets (RFC 2046 §5.1.1 boundary delimiters) and is linear in the
message size times at most :data:`MAX_NESTING`. Structural choices, stated once:

* Type, subtype, transfer encoding and disposition names are sent upper-case (as in the
  RFC 3501 examples).
* A text/* part without a charset parameter is shown with ``("CHARSET" "US-ASCII")``, its
  RFC 2046 §4.1.2 default, as Dovecot does.
* ``message/global`` (RFC 6532) is a basic body in BODY/BODYSTRUCTURE, since RFC 3501's
  grammar (and Dovecot 2.3) gives only message/rfc822 an envelope; its part map still nests,
  so ``N.HEADER``/``N.TEXT``/``N.M`` work as RFC 9051 §6.4.5 numbers them, and its text parts
  are searchable.
* ``lines`` counts line ends, as Dovecot does: a last line cut short by the CRLF that belongs
  to a boundary delimiter is not counted.
* Sizes and lines are of the stored octets: a bare-LF message is not counted as if CRLF.
* A multipart without a usable boundary is invalid and falls back to the RFC 2045 §5.2
  default ``text/plain; charset=us-ascii``; a multipart with a boundary but no parts is shown
  with one empty text/plain part, since the grammar requires at least one (RFC 3501 §9 body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.message.envelope import envelope
from gateway.message.fields import (
    Field,
    analyzed_header_end,
    first_values,
    scan_fields,
    split_header,
)
from gateway.message.params import merge_params, param, params_wire, split_value, strip_comments
from gateway.message.wire import NIL, nstring

MAX_NESTING = 48
"""Deepest multipart / message nesting analysed; deeper containers become opaque leaves."""

MAX_PARTS = 5000
"""Most MIME entities analysed per message; containers past it become opaque leaves."""

_OPAQUE = (b"APPLICATION", b"OCTET-STREAM")


@dataclass
class Entity:
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
    children: list[Entity] = field(default_factory=list)
    inner: Entity | None = None
    fields: list[Field] = field(default_factory=list)  # its analysed header fields, in order


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
        main, pairs = split_value(value)
        ctype, slash, csub = main.partition(b"/")
        if slash and ctype and csub and b"/" not in csub:
            params = merge_params(pairs)
            ctype = ctype.upper()
            if ctype == b"TEXT" and param(params, b"CHARSET") is None:
                params.append((b"CHARSET", b"US-ASCII"))  # RFC 2045 §5.2, RFC 2046 §4.1.2
            return ctype, csub.upper(), params
    if default == (b"TEXT", b"PLAIN"):
        return b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")]
    return default[0], default[1], []


def _parse_entity(
    raw: bytes, start: int, end: int, depth: int, default: tuple[bytes, bytes], budget: _Budget
) -> Entity:
    budget.left -= 1
    he, bs = split_header(raw, start, end)
    fields = scan_fields(raw, start, analyzed_header_end(raw, start, he))
    values = first_values(raw, fields)
    ctype, csub, params = _content_type(values, default)
    ent = Entity(start, he, bs, end, values, ctype, csub, params, fields=fields)
    is_message = ctype == b"MESSAGE" and csub in (b"RFC822", b"GLOBAL")
    if ctype == b"MULTIPART":
        boundary = param(params, b"BOUNDARY")
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


def parse(raw: bytes) -> Entity:
    """The entity tree of a whole message, at most :data:`MAX_PARTS` entities."""
    return _parse_entity(raw, 0, len(raw), 0, (b"TEXT", b"PLAIN"), _Budget(MAX_PARTS))


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
        return NIL
    main, pairs = split_value(value)
    if not main:
        return NIL
    return b"(" + nstring(main.upper()) + b" " + params_wire(merge_params(pairs)) + b")"


def _language(values: dict[str, bytes]) -> bytes:
    value = values.get("content-language")
    if value is None:
        return NIL
    tags = [t.strip() for t in strip_comments(value).split(b",")]
    tags = [t for t in tags if t]
    if not tags:
        return NIL
    if len(tags) == 1:
        return nstring(tags[0])
    return b"(" + b" ".join(nstring(t) for t in tags) + b")"


def _location(values: dict[str, bytes]) -> bytes:
    """Content-Location with folding white space removed (RFC 2557 §4.4.2)."""
    value = values.get("content-location")
    if value is None:
        return NIL
    return nstring(b"".join(value.split()))


def body_structure(raw: bytes, ent: Entity, ext: bool) -> bytes:
    """BODYSTRUCTURE (``ext``) or BODY of one entity."""
    values = ent.values
    if ent.kind == "M":
        kids = b"".join(body_structure(raw, c, ext) for c in ent.children)
        if not kids:  # body-type-mpart needs at least one body (RFC 3501 §9)
            kids = _EMPTY_BODYSTRUCTURE if ext else _EMPTY_BODY
        out = b"(" + kids + b" " + nstring(ent.csub)
        if ext:
            out += b" " + b" ".join(
                (
                    params_wire(ent.params),
                    _disposition(values),
                    _language(values),
                    _location(values),
                )
            )
        return out + b")"
    cte = values.get("content-transfer-encoding")
    encoding = b"".join(cte.split()).upper() if cte else b""
    fields = (
        nstring(ent.ctype),
        nstring(ent.csub),
        params_wire(ent.params),
        nstring(values.get("content-id")),
        nstring(values.get("content-description")),
        nstring(encoding or b"7BIT"),
        b"%d" % (ent.be - ent.bs),
    )
    out = b"(" + b" ".join(fields)
    if ent.kind == "R" and ent.csub == b"RFC822":
        assert ent.inner is not None
        out += b" " + b" ".join(
            (
                envelope(ent.inner.values),
                body_structure(raw, ent.inner, ext),
                b"%d" % _lines(raw, ent.bs, ent.be),
            )
        )
    elif ent.ctype == b"TEXT":
        out += b" %d" % _lines(raw, ent.bs, ent.be)
    if ext:
        out += b" " + b" ".join(
            (
                nstring(values.get("content-md5")),
                _disposition(values),
                _language(values),
                _location(values),
            )
        )
    return out + b")"


def part_map(ent: Entity) -> list[object]:
    """The JSON part map: ``[hs, he, bs, be]`` for a leaf, ``[hs, he, bs, be, "M", [child...]]``
    for a multipart and ``[hs, he, bs, be, "R", message]`` for an encapsulated message."""
    node: list[object] = [ent.hs, ent.he, ent.bs, ent.be]
    if ent.kind == "M":
        node += ["M", [part_map(c) for c in ent.children]]
    elif ent.kind == "R" and ent.inner is not None:
        node += ["R", part_map(ent.inner)]
    return node
