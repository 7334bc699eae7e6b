"""Byte-exact header work on submitted messages: read fields, drop Bcc, add what
RFC 6409 §8 lets a submission server add (Message-ID, Date).

Pure functions over the raw octets (CRLF line ends, as received by DATA). The body
and every header field not touched are passed through byte for byte: a DKIM
signature made by the client, or an 8-bit/UTF-8 header (RFC 6532), survives.
"""

from __future__ import annotations

import email.utils
import re
import time
import uuid

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """``(header block including its final CRLF, rest)``; the rest starts with the blank
    line's CRLF, or is empty for a message without a body separator."""
    if raw.startswith(b"\r\n"):
        return b"", raw
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw, b""
    return raw[: end + 2], raw[end + 2 :]


def header_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header block as ``(name, whole field octets with folding and the
    final CRLF)``; a line that is neither a field nor a continuation is its own
    nameless field (kept, never interpreted)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
            continue
        match = _FIELD_NAME.match(line)
        fields.append((match.group(1) if match else b"", line))
    return fields


def field_value(field: bytes) -> str:
    """The unfolded value of one field's octets, decoded as UTF-8 (RFC 6532)."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


def values(raw: bytes, name: str) -> list[str]:
    """The values of every header field called ``name`` (case-insensitive)."""
    wanted = name.lower().encode("ascii")
    header, _ = split_message(raw)
    return [field_value(text) for fname, text in header_fields(header) if fname.lower() == wanted]


def strip_fields(raw: bytes, names: tuple[str, ...]) -> bytes:
    """``raw`` without the header fields called one of ``names``, otherwise unchanged."""
    drop = {n.lower().encode("ascii") for n in names}
    header, rest = split_message(raw)
    kept = b"".join(text for fname, text in header_fields(header) if fname.lower() not in drop)
    return kept + rest


BCC_FIELDS = ("Bcc", "Resent-Bcc")
"""Removed from the relayed copy (RFC 5322 §3.6.3, RFC 6409 §8 "MAY remove Bcc")."""


def strip_bcc(raw: bytes) -> bytes:
    """The copy relayed to the upstream: Bcc and Resent-Bcc removed. Their addresses
    are still in the envelope, so the Bcc recipients get the message; nobody sees them."""
    return strip_fields(raw, BCC_FIELDS)


def complete_header(raw: bytes, domain: str, now: float | None = None) -> bytes:
    """Add ``Message-ID`` (RFC 6409 §8.3) and ``Date`` (§8.2) when missing, at the top of
    the header; everything else unchanged. Message-ID also keys the Sent dedup."""
    added = b""
    if not values(raw, "Date"):
        stamp = email.utils.formatdate(now if now is not None else time.time(), localtime=False)
        added += b"Date: " + stamp.encode("ascii") + b"\r\n"
    if not values(raw, "Message-ID"):
        added += b"Message-ID: <" + f"{uuid.uuid4().hex}@{domain}".encode() + b">\r\n"
    return added + raw if added else raw


def message_id(raw: bytes) -> str | None:
    """The first Message-ID value, angle brackets included, or None."""
    found = values(raw, "Message-ID")
    return found[0] if found and found[0] else None
