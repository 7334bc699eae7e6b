"""Decoding for SEARCH: header text (RFC 2047), text/* bodies (RFC 2045 §6 transfer
encodings, charsets) and the Date: header (RFC 5322 §3.3).

Decoding is bounded: at most :data:`MAX_TEXT_INPUT` encoded octets of one part are decoded
and the collected text is capped at :data:`MAX_TEXT_CHARS`. Unknown charsets fall back to
UTF-8 with replacement, so every message yields some text.
"""

from __future__ import annotations

import binascii
import datetime
import email.utils
import html
import re

from gateway.message.params import param
from gateway.message.structure import Entity

MAX_TEXT_CHARS = 1 << 20
"""Cap on the collected search text, in characters (1 MiB), to bound memory per message."""

MAX_TEXT_INPUT = 8 << 20
"""Most encoded octets of one text part fed to the decoders for the search text."""

MAX_CHARSET_NAME = 64
"""Longest charset name looked up; longer names fall back to UTF-8."""

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


def text_of_value(value: bytes) -> str:
    """A raw header value as text: UTF-8 (RFC 6532) or else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def b64decode(data: bytes) -> bytes:
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
            data = b64decode(payload)
        else:
            data = binascii.a2b_qp(payload, header=True)
        out.append(_decode_bytes(data, charset))
        pos = last_end = m.end()
    out.append(text[pos:])
    return "".join(out)


def decoded_header(value: bytes) -> str:
    return _decode_words(text_of_value(value))


def leaf_text(raw: bytes, ent: Entity, limit: int) -> str:
    """Transfer- and charset-decoded text of one text/* leaf, at most ``limit`` characters."""
    data = raw[ent.bs : min(ent.be, ent.bs + MAX_TEXT_INPUT)]
    cte = ent.values.get("content-transfer-encoding", b"").strip().lower()
    if cte == b"base64":
        data = b64decode(data)
    elif cte == b"quoted-printable":
        data = binascii.a2b_qp(data)
    charset = param(ent.params, b"CHARSET")
    text = _decode_bytes(data, charset.decode("latin-1") if charset else "")
    if ent.csub == b"HTML":
        text = html.unescape(_TAG.sub(" ", text))
    return text[:limit]


def collect_text(raw: bytes, root: Entity) -> str:
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
            text = leaf_text(raw, ent, left)
            pieces.append(text)
            left -= len(text) + 1
    return "\n".join(pieces)[:MAX_TEXT_CHARS]


def sent_date(value: bytes | None) -> datetime.datetime | None:
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
