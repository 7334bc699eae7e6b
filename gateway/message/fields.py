"""Header fields on byte offsets: the header/body split and field scanning (RFC 5322 §2.1-2.2).

Every later step (parameters, addresses, structure, HEADER.FIELDS) works from these offsets
into the stored bytes, so nothing is re-serialised and folding, case and 8-bit bytes survive.
Lenient by design: bare LF line ends and lines without a colon are tolerated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Field:
    """One header field: lower-case name (None for a line with no colon), value offsets."""

    name: str | None
    start: int  # first byte of the field
    value: int  # first byte after the colon (== start for a line with no colon)
    end: int  # one past the field's last line end


MAX_ANALYZED_HEADER = 256 * 1024
"""Octets of one entity's header section that ingest parses into fields (ENVELOPE, SEARCH,
BODYSTRUCTURE). Fields beyond are kept byte-exact in the stored message (``BODY[HEADER]``
returns them) but are not parsed or indexed: a hostile upstream sending a 50 MB header
would otherwise hold the reactor for seconds and index half a million fields. Real mail
stays far below (long ``Received``/DKIM/ARC chains reach tens of KB); Postfix bounds
what it keeps of a header in a similar way (``header_size_limit``)."""

_BLANK_LINE = re.compile(rb"\n\r?\n")


def split_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
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


def analyzed_header_end(raw: bytes, start: int, header_end: int) -> int:
    """Where ingest stops parsing the header section raw[start:header_end]: at its end, or
    at the last line end within :data:`MAX_ANALYZED_HEADER` octets (a field that runs past
    the limit is cut at a line boundary)."""
    limit = start + MAX_ANALYZED_HEADER
    if header_end <= limit:
        return header_end
    nl = raw.rfind(b"\n", start, limit)
    return nl + 1 if nl >= start else limit


def scan_fields(raw: bytes, start: int, end: int) -> list[Field]:
    """Split raw[start:end] into header fields; continuation lines (leading SP/HT) are
    kept with the field they fold (RFC 5322 §2.2.3)."""
    fields: list[Field] = []
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if raw[pos] in (0x20, 0x09) and fields:
            fields[-1].end = line_end
        else:
            colon = raw.find(b":", pos, line_end)
            if colon < 0:
                fields.append(Field(None, pos, pos, line_end))
            else:
                name = raw[pos:colon].rstrip(b" \t").decode("latin-1").lower()
                fields.append(Field(name, pos, colon + 1, line_end))
        pos = line_end
    return fields


_LINE_BREAK = re.compile(rb"\r?\n")


def unfold(value: bytes) -> bytes:
    """Remove the line breaks of a folded value and trim it (RFC 5322 §2.2.3).

    Most fields are one line whose only line break is its last byte: trimming alone is
    then the same result, without the regex (this runs for every header field at ingest).
    """
    if value.find(b"\n") >= len(value) - 1:
        return value.strip(b" \t\r\n")
    return _LINE_BREAK.sub(b"", value).strip(b" \t\r\n")


def first_values(raw: bytes, fields: list[Field]) -> dict[str, bytes]:
    """The unfolded value of the first occurrence of each field name."""
    values: dict[str, bytes] = {}
    for f in fields:
        if f.name is not None and f.name not in values:
            values[f.name] = unfold(raw[f.value : f.end])
    return values
