"""The per-user protocol trace's masking (issue 17 "Debugging a client"): sans-I/O.

An operator debugging "my phone shows something odd" wants the IMAP conversation as
Dovecot's rawlog gives it, without the secrets and without the mail. Masking follows the
stream's own structure, never guesses over text:

* client → server: the :class:`~gateway.imap.framing.CommandParser` reports every line
  and literal it consumes, saying which is which (``tap``); :class:`ClientMasker` knows
  the command they belong to. LOGIN keeps its user name and masks everything after it
  (password in any form: atom, quoted, literal); AUTHENTICATE masks the initial response
  and every SASL line; APPEND masks its literals (messages). Everything else is kept.
  Because the parser's framing is used, input the parser skips or refuses is framed
  the same way here, and a password can never be read as "some other command".
* server → client: our own responses, framed by :class:`ServerMasker` (lines, and
  literals announced at their end). A literal that is a message body is masked:
  ``BODY[]``, ``BODY[TEXT]``, ``BODY[1]``, ``BINARY[...]``, ``RFC822``, ``RFC822.TEXT``;
  headers (``BODY[HEADER]``, ``HEADER.FIELDS``, ``.MIME``, ``RFC822.HEADER``), ENVELOPE
  and BODYSTRUCTURE strings are kept.

Masked parts become ``[masked]`` (secrets: no length) or ``[N octets masked]`` (bodies).
"""

from __future__ import annotations

import re
from collections.abc import Callable

MASK = b"[masked]"

_LITERAL_AT_END = re.compile(rb"~?\{([0-9]{1,20})\+?\}$")
_COMMAND_WORD = re.compile(rb"^\S*\s+(?:UID\s+)?([A-Za-z]+)", re.ASCII)
_LOGIN_USER = re.compile(rb'^(\S*\s+LOGIN\s+)([^\s"{]+|"(?:[^"\\\r\n]|\\.)*")(?=\s)', re.I)
_AUTH_MECH = re.compile(rb"^(\S*\s+AUTHENTICATE\s+[A-Za-z0-9_-]+)", re.I)
_SERVER_TAIL = 1024
"""Octets of a response line kept to read the FETCH item just before a literal."""
_BODY_ITEM = re.compile(
    rb"(?:BODY|BINARY)\[([^\]]*)\](?:<[0-9]+>)?\s*~?\{[0-9]+\}$|RFC822(\.TEXT|\.HEADER)?\s*\{[0-9]+\}$",
    re.I,
)
_HEADER_SECTION = re.compile(rb"(?:^|\.)(?:HEADER(?:\.FIELDS(?:\.NOT)?\b.*)?|MIME)$", re.I | re.S)

Emit = Callable[[bytes], None]


def literal_size(line: bytes) -> int | None:
    """The size of the literal announced at the end of ``line``, if any."""
    m = _LITERAL_AT_END.search(line)
    return int(m.group(1)) if m else None


class ClientMasker:
    """Masks the client's side, fed with what the parser consumed (``tap`` events)."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._command = b""  # upper-case word of the command being read
        self._secret = True  # the rest of this command is a secret (LOGIN; and whatever
        # comes before the first command line seen, when a trace starts mid-stream)
        self._literal_masked = 0  # octets of the current masked literal so far

    def tap(self, kind: str, data: bytes) -> None:
        """``kind``: "first" (a command's first line), "more" (a line after a literal),
        "literal" (literal octets, maybe a piece), "raw" (a line read raw: SASL or DONE)."""
        if kind == "literal":
            if self._secret or self._command in (b"APPEND", b"LOGIN", b"AUTHENTICATE"):
                self._literal_masked += len(data)
            else:
                self._emit(data)
            return
        self._end_literal()
        if kind == "first":
            m = _COMMAND_WORD.match(data)
            self._command = m.group(1).upper() if m else b""
            self._secret = False
            self._emit(self._first_line(data) + b"\r\n")
        elif kind == "more":
            if self._secret:
                self._emit(self._masked_line(data) + b"\r\n")
            else:
                self._emit(data + b"\r\n")
        else:  # raw
            if self._command == b"AUTHENTICATE" and data.strip() != b"*":
                self._emit(MASK + b"\r\n")
            else:
                self._emit(data + b"\r\n")

    def _first_line(self, line: bytes) -> bytes:
        if self._command == b"LOGIN":
            self._secret = True
            m = _LOGIN_USER.match(line)
            head = m.group(1) + m.group(2) + b" " if m else line[: line.upper().find(b"LOGIN") + 6]
            return head + self._masked_line(line[len(head) :])
        if self._command == b"AUTHENTICATE":
            m = _AUTH_MECH.match(line)
            if m is None:
                return line[: line.upper().find(b"AUTHENTICATE") + 12] + b" " + MASK
            rest = line[m.end() :]
            return m.group(1) + (b" " + MASK if rest.strip() else b"")
        return line

    @staticmethod
    def _masked_line(rest: bytes) -> bytes:
        """A secret part of a line: masked, keeping a literal announcement at its end."""
        m = _LITERAL_AT_END.search(rest)
        return MASK + (b" " + m.group() if m else b"")

    def _end_literal(self) -> None:
        if self._literal_masked:
            if self._secret or self._command in (b"LOGIN", b"AUTHENTICATE"):
                self._emit(MASK)
            else:
                self._emit(b"[%d octets masked]" % self._literal_masked)
            self._literal_masked = 0

    def close(self) -> None:
        self._end_literal()


class ServerMasker:
    """Masks the server's side: frames our responses into lines and literals."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._tail = b""  # the end of the current line (up to _SERVER_TAIL octets)
        self._literal = 0  # octets of the current literal still to come
        self._masking = False
        self._masked = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._literal:
                take = min(self._literal, len(view))
                if self._masking:
                    self._masked += take
                else:
                    self._emit(bytes(view[:take]))
                self._literal -= take
                view = view[take:]
                if not self._literal and self._masking:
                    self._emit(b"[%d octets masked]" % self._masked)
                    self._masking, self._masked = False, 0
                continue
            end = bytes(view).find(b"\n")
            if end < 0:
                self._emit(bytes(view))
                self._tail = (self._tail + bytes(view))[-_SERVER_TAIL:]
                return
            piece = bytes(view[: end + 1])
            view = view[end + 1 :]
            self._emit(piece)
            line = (self._tail + piece)[-_SERVER_TAIL:].rstrip(b"\r\n")
            self._tail = b""
            size = literal_size(line)
            if size:
                self._literal = size
                self._masking = is_body_literal(line)


def is_body_literal(line: bytes) -> bool:
    """Whether the literal announced at the end of this response line is message text
    (masked) rather than headers, an ENVELOPE string or a name (kept)."""
    m = _BODY_ITEM.search(line)
    if m is None:
        return False
    if m.group(0)[:6].upper() == b"RFC822":
        return (m.group(2) or b"").upper() != b".HEADER"
    return _HEADER_SECTION.search(m.group(1)) is None
