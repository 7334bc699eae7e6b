"""Content-Type style values: the main token and its parameters (RFC 2045 §5.1, RFC 2183),
with RFC 2231 continuations merged.

An RFC 2231 extended value keeps its ``charset'lang'%XX`` form under the ``NAME*`` attribute,
which IMAP clients decode (as with Dovecot and Cyrus). Parameter names are sent upper-case,
values as they appear.
"""

from __future__ import annotations

import re

from gateway.message.wire import NIL, nstring

_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)", re.S)
_ATTRIBUTE = re.compile(rb"[ \t]*([^=;\s\"]+)[ \t]*(=?)[ \t]*")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"?', re.S)
QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_SECTION = re.compile(rb"^(.*?)\*(\d{1,3})(\*?)$", re.S)
_CTL_AND_SPACE = bytes(range(0x21)) + b"\x7f"
_PCT_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~")


def strip_comments(value: bytes) -> bytes:
    """Remove (possibly nested) comments outside quoted strings, innermost first."""
    for _ in range(8):
        stripped = _COMMENT.sub(b" ", value)
        if stripped == value:
            break
        value = stripped
    return value


def split_value(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split ``main; a=b; c="d"`` into the main token and raw (attribute, value) pairs.

    Unquoted values run to the next ``;`` (``boundary=----=_Part`` is common in the wild).
    """
    semi = value.find(b";")
    head = value if semi < 0 else value[:semi]
    main = strip_comments(head).translate(None, _CTL_AND_SPACE)
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
            val = QUOTED_PAIR.sub(rb"\1", q.group(1))
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


def merge_params(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
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


def params_wire(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return NIL
    return b"(" + b" ".join(nstring(k) + b" " + nstring(v) for k, v in params) + b")"


def param(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in params:
        if k == name:
            return v
    return None
