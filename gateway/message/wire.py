"""IMAP string forms (RFC 3501 §9) of the values message analysis precomputes.

The ENVELOPE and BODYSTRUCTURE are stored as their wire bytes, so the strings inside them are
quoted here, once, at ingest. Unlike the IMAP server's own writer, NUL is dropped rather than
sent in a literal: these values come from message headers, not from a client.
"""

from __future__ import annotations

import functools

NIL = b"NIL"
"""The IMAP NIL atom: no value."""


STRINGS_KEPT = 1024
"""Short values whose quoted form :func:`nstring` keeps: a BODYSTRUCTURE is mostly the
same few dozen words ("TEXT", "PLAIN", "CHARSET", "UTF-8", "BASE64"...), ~47 strings per
message at ingest (issue 19: 0.1 s of CPU per 2,000 messages)."""

KEPT_LENGTH = 64
"""Longest value kept: the cache stays a few hundred KiB whatever the headers hold."""


def nstring(value: bytes | None) -> bytes:
    """An IMAP nstring (RFC 3501 §9): NIL, a quoted string, or a literal when the value has
    8-bit bytes or CR/LF. NUL is not allowed in IMAP4rev1 strings and is dropped."""
    if value is not None and len(value) <= KEPT_LENGTH:
        return _kept_nstring(bytes(value))
    return _nstring(value)


@functools.lru_cache(maxsize=STRINGS_KEPT)
def _kept_nstring(value: bytes) -> bytes:
    return _nstring(value)


def _nstring(value: bytes | None) -> bytes:
    if value is None:
        return NIL
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    if b"\r" in value or b"\n" in value or not value.isascii():
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
