"""Modified UTF-7, the mailbox-name encoding of RFC 3501 §5.1.3.

Printable US-ASCII (0x20-0x7e) stands for itself except ``&``, written ``&-``; every
other run of characters is written ``&`` + modified base64 of its UTF-16BE form (``,``
instead of ``/``, no padding) + ``-``. The decoder is strict: it accepts exactly what
:func:`encode` produces, so each name has one spelling and two clients can never
create the "same" mailbox under two different wire names.
"""

from __future__ import annotations

import base64
import binascii
import re

_DIRECT_RE = re.compile(r"[\x20-\x25\x27-\x7e]+")  # printable ASCII except "&"
_SHIFTED_RE = re.compile(rb"&([A-Za-z0-9+,]*)-")
_PRINTABLE_RE = re.compile(rb"[\x20-\x7e]*")


def _b64_encode(text: str) -> bytes:
    data = text.encode("utf-16-be")  # raises UnicodeEncodeError (a ValueError) on surrogates
    return base64.b64encode(data).rstrip(b"=").replace(b"/", b",")


def encode(name: str) -> bytes:
    """Encode a mailbox name (RFC 3501 §5.1.3). Raises ValueError for a lone surrogate."""
    if name.isascii() and "&" not in name and _DIRECT_RE.fullmatch(name):
        return name.encode("ascii")
    out = []
    pos = 0
    length = len(name)
    while pos < length:
        m = _DIRECT_RE.match(name, pos)
        if m is not None:
            out.append(m.group().encode("ascii"))
            pos = m.end()
            continue
        if name[pos] == "&":
            out.append(b"&-")
            pos += 1
            continue
        end = pos + 1
        while end < length and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        out.append(b"&" + _b64_encode(name[pos:end]) + b"-")
        pos = end
    return b"".join(out)


def decode(data: bytes) -> str:
    """Decode a mailbox name (RFC 3501 §5.1.3).

    Raises ValueError for anything :func:`encode` would not produce: bytes outside
    printable ASCII, a ``&`` without its ``-``, bad base64, an odd number of UTF-16
    octets, an unpaired surrogate, base64 used for printable ASCII, or two shifted
    runs back to back.
    """
    if _PRINTABLE_RE.fullmatch(data) is None:
        raise ValueError("modified UTF-7 allows only printable US-ASCII octets")
    if b"&" not in data:
        return data.decode("ascii")
    out = []
    pos = 0
    length = len(data)
    while pos < length:
        amp = data.find(b"&", pos)
        if amp < 0:
            out.append(data[pos:].decode("ascii"))
            break
        out.append(data[pos:amp].decode("ascii"))
        m = _SHIFTED_RE.match(data, amp)
        if m is None:
            raise ValueError("unterminated or invalid modified base64 after '&'")
        chunk = m.group(1)
        if chunk:
            raw = chunk.replace(b",", b"/")
            try:
                octets = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
                text = octets.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("invalid modified base64 in mailbox name") from None
            out.append(text)
        else:
            out.append("&")
        pos = m.end()
    result = "".join(out)
    if encode(result) != data:
        raise ValueError("non-canonical modified UTF-7 in mailbox name")
    return result
