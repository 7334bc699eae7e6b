"""ManageSieve string encoding (RFC 5804 §4), both directions.

Server responses carry strings as ``quoted`` when that is possible and as
``literal-s2c`` (``{n}`` CRLF octets) otherwise; a client sends ``literal-c2s``
(``{n+}``). Kept apart from the session so that tests (and a future command-line
client) encode exactly as the server decodes.
"""

from __future__ import annotations

import re

from gateway.managesieve.parser import MAX_QUOTED_LENGTH

_NEEDS_LITERAL = re.compile(rb"[\x00\r\n]")


def _quotable(value: bytes) -> bool:
    return len(value) <= MAX_QUOTED_LENGTH // 2 and _NEEDS_LITERAL.search(value) is None


def quoted(value: bytes) -> bytes:
    """``"..."`` with ``"`` and ``\\`` escaped; only for values :func:`_quotable` allows."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string_s2c(value: bytes) -> bytes:
    """A string in a server response: quoted if short and free of CR, LF and NUL
    (escapes can double its length, hence half the quoted limit), else ``{n}`` literal."""
    if _quotable(value):
        return quoted(value)
    return b"{%d}\r\n" % len(value) + value


def string_c2s(value: bytes, *, literal: bool | None = None) -> bytes:
    """A string as a client sends it: quoted when possible unless ``literal`` is true,
    else ``{n+}`` CRLF octets (RFC 5804 ``literal-c2s``)."""
    if literal is None:
        literal = not _quotable(value)
    if literal:
        return b"{%d+}\r\n" % len(value) + value
    return quoted(value)
