"""Message analysis done once at ingest: ENVELOPE, BODYSTRUCTURE, BODY, part offsets, search text.

FETCH never re-parses a message (RFC 3501 §6.4.5, §7.4.2): :func:`analyze` computes the wire
forms and a JSON part map of byte offsets into the stored bytes, and
:func:`gateway.message.sections.section` cuts any ``BODY[section]`` out of those bytes by
offset. Bytes are served exactly as stored: nothing here re-serialises a message, so case,
folding and 8-bit bytes survive.

The scanner is our own and works on byte offsets (RFC 5322 §2.1 header/body split, RFC 2046
§5.1.1 boundary delimiters). It is lenient: bare LF line ends, missing close delimiters, missing
boundaries and malformed header fields are tolerated, and every input yields an
:class:`Analysis`. The choices it makes are stated in the module that makes them.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field

from gateway.message.envelope import address_text, envelope
from gateway.message.fields import Field, analyzed_header_end, scan_fields, split_header, unfold
from gateway.message.sortkeys import SortKeys, sort_keys
from gateway.message.structure import body_structure, parse, part_map
from gateway.message.text import collect_text, decoded_header, sent_date, text_of_value

ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc"})
"""Header fields SEARCH FROM/TO/CC/BCC match by their parsed addresses (RFC 3501 §6.4.4)."""


@dataclass(frozen=True)
class Analysis:
    """What FETCH and SEARCH need about one message, computed once at ingest."""

    envelope: bytes  # RFC 3501 §7.4.2 ENVELOPE wire form
    bodystructure: bytes  # BODYSTRUCTURE with extension data
    body: bytes  # BODY, the non-extensible form
    parts: str  # compact JSON part map of byte offsets, consumed by section()
    headers: list[tuple[str, str]]  # (lower-case name, decoded value), top-level, in order
    addresses: list[tuple[str, str]]  # (name, decoded address_text) of each From/To/Cc/Bcc
    text: str  # decoded text of the text/* leaves, for SEARCH BODY/TEXT
    sent_date: datetime.datetime | None  # the Date: header, timezone-aware
    message_id: str | None
    sort: SortKeys = field(default_factory=SortKeys)  # SORT/THREAD keys (RFC 5256)


def analyze(raw: bytes) -> Analysis:
    """Analyse one stored message (RFC 5322 / MIME) for FETCH and SEARCH.

    Never raises for any bytes: malformed structure degrades to the RFC 2045 defaults.
    Bounded: a header section is parsed up to :data:`~gateway.message.fields.MAX_ANALYZED_HEADER`
    octets, text is decoded up to :data:`~gateway.message.text.MAX_TEXT_INPUT` per part.
    """
    raw = bytes(raw)
    root = parse(raw)
    fields = root.fields  # scanned once by parse(), up to analyzed_header_end
    headers = [
        (f.name, decoded_header(unfold(raw[f.value : f.end]))) for f in fields if f.name is not None
    ]
    addresses = _addresses(raw, fields)
    message_id = root.values.get("message-id")
    return Analysis(
        envelope=envelope(root.values),
        bodystructure=body_structure(raw, root, True),
        body=body_structure(raw, root, False),
        parts=json.dumps(part_map(root), separators=(",", ":")),
        headers=headers,
        addresses=addresses,
        text=collect_text(raw, root),
        sent_date=sent_date(root.values.get("date")),
        message_id=text_of_value(message_id) if message_id else None,
        sort=sort_keys(root.values),
    )


def _addresses(raw: bytes, fields: list[Field]) -> list[tuple[str, str]]:
    return [
        (f.name, decoded_header(address_text(unfold(raw[f.value : f.end]))))
        for f in fields
        if f.name in ADDRESS_FIELDS
    ]


def header_addresses(raw: bytes) -> list[tuple[str, str]]:
    """:attr:`Analysis.addresses` of a message from its first octets alone (at least its
    header section up to :data:`~gateway.message.fields.MAX_ANALYZED_HEADER`), for a store
    adding them to messages analysed before they existed."""
    header_end, _ = split_header(raw, 0, len(raw))
    return _addresses(raw, scan_fields(raw, 0, analyzed_header_end(raw, 0, header_end)))
