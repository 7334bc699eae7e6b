"""The SMTP input parser: command lines and DATA bodies, sans-I/O (no socket, no reactor).

``receive_data(bytes)`` then ``next_event()`` until :class:`NeedData`, as the IMAP and
ManageSieve parsers do. Two modes:

- **lines** (commands and SASL responses): each line up to ``max_line`` octets, CRLF
  (or a lone LF, for lenient clients) removed. A longer line is read to its end and
  thrown away, then reported once as :class:`LineTooLong`, so the server stays in step
  (RFC 5321 §4.5.3.1.4 answers it with 500 5.5.6, nothing of it is interpreted).
- **data** (after ``354``, :meth:`SMTPParser.expect_data`): the message up to the first
  ``CRLF.CRLF``, dot-unstuffed (RFC 5321 §4.5.2). Only CRLF ends a line here: a bare LF
  followed by "." never ends the message (the "SMTP smuggling" family of bugs), and the
  finished message has every bare CR or LF turned into CRLF, so the copy relayed upstream
  cannot be read differently by the next server. Past ``max_size`` octets the rest is
  read and discarded until the terminator, then :class:`MessageTooLarge` is reported
  (RFC 1870 §6); memory stays bounded by ``max_size`` plus one chunk.

Input after the terminator (pipelined commands, RFC 2920) stays buffered for line mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PARTIAL_LINE = 64 * 1024
"""In data mode a line longer than this is moved to the message in pieces, so a client
that never sends CRLF cannot grow the buffer past the message limit."""


@dataclass(frozen=True)
class NeedData:
    """Nothing complete yet; feed more bytes."""


@dataclass(frozen=True)
class Line:
    """One command or SASL line, without its line end."""

    text: bytes


@dataclass(frozen=True)
class LineTooLong:
    """A line over the limit was read and discarded."""


@dataclass(frozen=True)
class MessageData:
    """The complete message, dot-unstuffed, every line ending in CRLF."""

    raw: bytes


@dataclass(frozen=True)
class MessageTooLarge:
    """The message ended but went over ``max_size``; ``size`` octets were seen."""

    size: int


Event = NeedData | Line | LineTooLong | MessageData | MessageTooLarge

_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def normalize_line_ends(raw: bytes) -> bytes:
    """Every bare CR or bare LF becomes CRLF; a non-empty message ends with CRLF."""
    if b"\n" in raw.replace(b"\r\n", b"") or b"\r" in raw.replace(b"\r\n", b""):
        raw = _BARE_EOL.sub(b"\r\n", raw)
    if raw and not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


class SMTPParser:
    """See the module docstring."""

    def __init__(self, max_line: int = 4096) -> None:
        self.max_line = max_line
        self._buf = b""
        self._discarding = False
        self._data: list[bytes] | None = None
        self._max_size = 0
        self._size = 0
        self._at_line_start = True

    @property
    def buffered_size(self) -> int:
        return len(self._buf)

    @property
    def in_data(self) -> bool:
        return self._data is not None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def expect_data(self, max_size: int) -> None:
        """The next octets are a DATA body (the server has just written ``354``)."""
        self._data = []
        self._max_size = max_size
        self._size = 0
        self._at_line_start = True

    def next_event(self) -> Event:
        if self._data is not None:
            return self._next_data()
        return self._next_line()

    # -- line mode --

    def _next_line(self) -> Event:
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line + 1:
                    self._discarding = True
                    self._buf = self._buf[-1:]  # a CR that may start the line end
                return NeedData()
            line, self._buf = self._buf[:end], self._buf[end + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._discarding:
                self._discarding = False
                return LineTooLong()
            if len(line) > self.max_line:
                return LineTooLong()
            return Line(line)

    # -- data mode --

    def _next_data(self) -> Event:
        assert self._data is not None
        buf = self._buf
        prefix = b"\r\n" if self._at_line_start else b""
        scan = prefix + buf
        end = scan.find(b"\r\n.\r\n")
        if end >= 0:
            body = scan[len(prefix) : end + 2]
            self._buf = scan[end + 5 :]
            self._take(body, line_start=self._at_line_start)
            return self._finish()
        cut = buf.rfind(b"\r\n")
        if cut >= 0:
            complete, self._buf = buf[: cut + 2], buf[cut + 2 :]
            self._take(complete, line_start=self._at_line_start)
            self._at_line_start = True
        if len(self._buf) > MAX_PARTIAL_LINE:
            head, self._buf = self._buf[:-1], self._buf[-1:]
            self._take(head, line_start=self._at_line_start)
            self._at_line_start = False
        return NeedData()

    def _take(self, piece: bytes, line_start: bool) -> None:
        if not piece:
            return
        unstuffed = (b"\r\n" + piece if line_start else piece).replace(b"\r\n..", b"\r\n.")
        if line_start:
            unstuffed = unstuffed[2:]
        self._size += len(unstuffed)
        if self._data is not None and self._size <= self._max_size:
            self._data.append(unstuffed)

    def _finish(self) -> Event:
        pieces, self._data = self._data, None
        self._at_line_start = True
        if self._size > self._max_size:
            return MessageTooLarge(self._size)
        return MessageData(normalize_line_ends(b"".join(pieces or [])))
