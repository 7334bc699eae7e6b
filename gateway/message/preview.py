"""The RFC 8970 preview of a message: the start of its first text part, as plain text.

§3.2: at most 256 characters, no markup, whitespace runs collapsed, no content a client
could not show (a message without text gives the empty string). The first text/plain
leaf is preferred, else the first text/html one with its tags removed; transfer and
charset decoding are the SEARCH text's (:mod:`gateway.message.text`).
"""

from __future__ import annotations

import re

from gateway.message.structure import Entity, parse
from gateway.message.text import leaf_text

PREVIEW_CHARS = 256
"""RFC 8970 §3.2: a preview is no longer than 256 characters."""

_DECODE_CHARS = 4 * PREVIEW_CHARS
"""Characters decoded from the part before collapsing whitespace (quoted text and
blank lines shrink a lot)."""

_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _first_text(root: Entity) -> Entity | None:
    html = None
    stack = [root]
    while stack:
        ent = stack.pop()
        if ent.kind == "M":
            stack.extend(reversed(ent.children))
        elif ent.kind == "R":
            continue  # an attached message is not this message's text
        elif ent.ctype == b"TEXT":
            disposition = ent.values.get("content-disposition", b"").strip().lower()
            if disposition.startswith(b"attachment"):
                continue
            if ent.csub == b"PLAIN":
                return ent
            if ent.csub == b"HTML" and html is None:
                html = ent
    return html


def preview(raw: bytes) -> str:
    """The preview text (possibly empty) of a stored message."""
    raw = bytes(raw)
    ent = _first_text(parse(raw))
    if ent is None:
        return ""
    text = leaf_text(raw, ent, _DECODE_CHARS)
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text[:PREVIEW_CHARS]
