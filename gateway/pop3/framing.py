"""How POP3 responses are framed on the wire (RFC 1939 §3), sans-I/O: the line limit, the
status line test, and the reader of one dot-stuffed multi-line body fed in raw chunks.
"""

from __future__ import annotations

MAX_LINE_LENGTH = 1024 * 1024
"""Longest line accepted from an upstream, CRLF excluded. RFC 5322 §2.1.1 caps lines at
998 octets but real mail (HTML, base64 without folding) breaks that; a line longer than
this still drops the connection, and the fetcher records that message as skipped."""


def is_status_line(line: bytes) -> bool:
    return line.split(b" ", 1)[0] in (b"+OK", b"-ERR")


class BodyLineTooLong(Exception):
    """A line of a multi-line body is longer than the reader's ``max_line_length``."""


class DotStuffedBody:
    """Sans-I/O reader of one multi-line response body (RFC 1939 §3), fed in raw chunks.

    The body starts right after the ``+OK`` line and ends with a line holding a single
    ".", i.e. at the first ``CRLF.CRLF`` (or at a leading ``.CRLF`` for an empty body);
    a line the server began with "." arrives with one more "." that is removed here.

    :meth:`feed` cuts what it returns right after a CRLF, so every piece holds whole
    lines: the terminator and the ``CRLF..`` stuffing pattern are searched in bytes that
    start at a line start, never across two pieces, and one ``bytes.replace`` per piece
    undoes the stuffing. Only an unfinished last line (at most ``max_line_length``
    octets) is held back between calls.

    Lines are only split on CRLF, as Twisted's line reader did: a bare LF or CR from a
    broken server stays inside its line, and ``LF.LF`` does not end the body.
    """

    def __init__(self, max_line_length: int) -> None:
        self.max_line_length = max_line_length
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes | None, bytes | None]:
        """Take the next octets; return ``(piece, rest)``.

        ``piece`` is every line completed by this call, dot-unstuffed and joined by CRLF
        without the final CRLF (so ``piece + CRLF`` are the message octets), or None if
        no line was completed. ``rest`` is None while the body goes on, else the octets
        that followed the terminating ``.CRLF`` (the start of the next response).
        Raises :class:`BodyLineTooLong` for a line over ``max_line_length`` octets
        (CRLF excluded), before returning any part of the chunk that holds it.
        """
        held = len(self._pending)
        buf = self._pending + data if held else data
        if buf.startswith(b".\r\n"):  # the terminator right at a line start
            self._pending = b""
            return None, buf[3:]
        # What was held back has no CRLF; only its last octet can start one.
        start = max(0, held - 1)
        end = buf.find(b"\r\n.\r\n", start)
        if end >= 0:
            rest: bytes | None = buf[end + 5 :]
            pending = b""
        else:
            end = buf.rfind(b"\r\n", start)
            rest = None
            pending = buf if end < 0 else buf[end + 2 :]
            self._check_unfinished(pending)
            if end < 0:
                self._pending = pending
                return None, None
        self._check_lines(buf, end + 2)
        self._pending = pending
        piece = buf[:end]
        if piece.startswith(b".."):
            piece = piece[1:]
        return piece.replace(b"\r\n..", b"\r\n."), rest

    def _check_lines(self, buf: bytes, stop: int) -> None:
        """Every line in ``buf[:stop]`` (which ends with CRLF) is at most the limit long.

        Looks at the distance between CRLFs with one ``rfind`` per window of
        ``max_line_length + 2`` octets, so a chunk of short lines costs one call."""
        limit = self.max_line_length
        pos = 0
        while stop - pos > limit + 2:
            crlf = buf.rfind(b"\r\n", pos, pos + limit + 2)
            if crlf < 0:
                raise BodyLineTooLong()
            pos = crlf + 2

    def _check_unfinished(self, tail: bytes) -> None:
        # A CR at the very end may be the first half of the CRLF that ends the line.
        if len(tail) - tail.endswith(b"\r") > self.max_line_length:
            raise BodyLineTooLong()
