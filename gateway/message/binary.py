"""Content-transfer decoding of one body part for ``BINARY[section]`` (RFC 3516 §4.2).

The part is found by the stored part map (as :mod:`gateway.message.sections` does for
``BODY[section]``) and its Content-Transfer-Encoding read from the part's own MIME header.
Identity encodings (7bit, 8bit, binary, none) give the bytes as stored; base64 and
quoted-printable are decoded; anything else is :class:`UnknownCte`, which the IMAP layer
answers ``NO [UNKNOWN-CTE]`` (§4.3). A multipart or message/rfc822 part has no transfer
encoding of its own other than an identity one, so its bytes come back as stored.
"""

from __future__ import annotations

import binascii
import json

from gateway.message.fields import scan_fields, unfold
from gateway.message.sections import resolve_node
from gateway.message.text import b64decode

IDENTITY_ENCODINGS = frozenset((b"", b"7bit", b"8bit", b"binary"))
"""RFC 2045 §6.1 encodings that leave the bytes as they are."""


class UnknownCte(ValueError):
    """The part's Content-Transfer-Encoding is not one the server can decode."""


def _encoding(raw: bytes, node: list) -> bytes:
    for f in scan_fields(raw, node[0], node[1]):
        if f.name is not None and f.name.lower() == "content-transfer-encoding":
            return unfold(raw[f.value : f.end]).strip().lower()
    return b""


def binary_section(raw: bytes, parts: str, part: tuple[int, ...]) -> bytes | None:
    """The decoded content of ``BINARY[part]``; None for a part that does not exist.

    ``part == ()`` is the whole message: its header is text and its body is only decoded
    when the top-level entity itself is a leaf with an encoding (RFC 3516 §4.2 applies
    decoding to the part's content; the whole message keeps its header as is).
    """
    root = json.loads(parts)
    if not part:
        cte = _encoding(raw, root)
        if len(root) > 4 and root[4] in ("M", "R") or cte in IDENTITY_ENCODINGS:
            return raw
        return raw[root[0] : root[2]] + _decode(raw[root[2] : root[3]], cte)
    node = resolve_node(root, part)
    if node is None:
        return None
    body = raw[node[2] : node[3]]
    if len(node) > 4 and node[4] in ("M", "R"):
        return body
    return _decode(body, _encoding(raw, node))


def _decode(data: bytes, cte: bytes) -> bytes:
    if cte in IDENTITY_ENCODINGS:
        return data
    if cte == b"base64":
        return b64decode(data)
    if cte == b"quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCte(cte.decode("latin-1"))
