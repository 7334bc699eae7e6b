"""A small blocking IMAP client that times commands and counts the octets the server sent.

imaplib would do, but it copies every literal into Python objects and offers no byte count;
the benchmarks want the server's cost, not the client's, and QRESYNC is judged on octets
(RFC 7162 §3.2.5). This client reads responses in large chunks and only follows their
framing: lines end in CRLF, a line ending in ``{n}`` (or ``{n+}``) is followed by an n-octet
literal (RFC 3501 §4.3) that is skipped or kept, and the command ends at the line that starts
with its tag (RFC 3501 §2.2.2). The same client drives popgate and Dovecot.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

READ_CHUNK = 256 * 1024
"""Octets asked of recv() at a time."""

SOCKET_TIMEOUT = 300.0
"""A safety net against a hung server, never a measurement."""

MAX_KEPT_LINE = 16 * 1024 * 1024
"""Longest untagged line (literals included) kept in memory when ``keep=True``."""

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")


class IMAPFailure(Exception):
    """The server answered NO or BAD (or closed the connection)."""


@dataclass
class Reply:
    """A completed command: the tagged status, timing and, when kept, the untagged lines."""

    status: bytes
    seconds: float
    received: int
    lines: list[bytes] = field(default_factory=list)
    untagged: int = 0


class IMAPConnection:
    """One connection: ``command(b"SELECT INBOX")`` sends a tagged command and reads its reply."""

    def __init__(self, host: str, port: int, *, timeout: float = SOCKET_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._scratch = bytearray(READ_CHUNK)
        self._scratch_view = memoryview(self._scratch)
        self._pos = 0
        self._tag = 0
        self.received = 0
        self.greeting = self._line()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> IMAPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, user: str, password: str) -> Reply:
        return self.command(b"LOGIN " + _quoted(user) + b" " + _quoted(password))

    def logout(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (IMAPFailure, OSError):
            pass
        self.close()

    def command(self, text: bytes, *, keep: bool = False, check: bool = True) -> Reply:
        """Send one command and read until its tagged reply; raise IMAPFailure on NO/BAD.

        ``seconds`` runs from just before the send to the tagged line; ``received`` is every
        octet the server sent for this command (untagged data, literals, the tagged line).
        """
        self._tag += 1
        tag = b"B%04d" % self._tag
        start_bytes = self.received
        started = time.perf_counter()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines: list[bytes] = []
        untagged = 0
        prefix = tag + b" "
        while True:
            line = self._logical_line(keep)
            if line.startswith(prefix):
                seconds = time.perf_counter() - started
                status = line[len(prefix) :]
                reply = Reply(status, seconds, self.received - start_bytes, lines, untagged)
                if check and not status.startswith(b"OK"):
                    raise IMAPFailure(f"{text[:60]!r} -> {status[:200]!r}")
                return reply
            untagged += 1
            if keep:
                lines.append(line)

    def idle_start(self) -> None:
        """Send IDLE (RFC 2177) and wait for the continuation request."""
        self._tag += 1
        self.sock.sendall(b"B%04d IDLE\r\n" % self._tag)
        while True:
            line = self._logical_line(False)
            if line.startswith(b"+"):
                return
            if line.startswith(b"B%04d " % self._tag):
                raise IMAPFailure(f"IDLE refused: {line!r}")

    # -- framing --

    def _fill(self) -> None:
        """Read more octets; consumed ones are dropped first (one memmove per chunk,
        not per line, which matters for 10,000-line FETCH replies).

        The octets land in one reused buffer (``recv_into``): ``recv(READ_CHUNK)``
        allocates a fresh 256 KiB object per call, which glibc maps and unmaps whenever a
        whole READ_CHUNK is waiting, so the client's cost grew with the server's lead
        (11,000 page faults and 2.5x the client CPU for the 33 MB body FETCH when the
        server wrote faster than the client read; none in lockstep): the figure then
        measured the client's allocator, not the server (issue 19)."""
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        count = self.sock.recv_into(self._scratch)
        if not count:
            raise IMAPFailure("connection closed by the server")
        self.received += count
        self._buffer += self._scratch_view[:count]

    def _line(self) -> bytes:
        """One CRLF-terminated line (without CRLF)."""
        search_from = self._pos
        while True:
            end = self._buffer.find(b"\r\n", search_from)
            if end >= 0:
                line = bytes(self._buffer[self._pos : end])
                self._pos = end + 2
                return line
            search_from = max(self._pos, len(self._buffer) - 1)
            before = self._pos
            self._fill()
            search_from -= before

    def _skip(self, count: int, keep: bool) -> bytes:
        """Consume a literal of ``count`` octets; return it only when kept."""
        kept = bytearray()
        while count:
            if self._pos >= len(self._buffer):
                self._fill()
            take = min(count, len(self._buffer) - self._pos)
            if keep and len(kept) < MAX_KEPT_LINE:
                kept += self._buffer[self._pos : self._pos + take]
            self._pos += take
            count -= take
        return bytes(kept)

    def _logical_line(self, keep: bool) -> bytes:
        """A response line with its literals (kept inline, or dropped when not kept)."""
        parts: list[bytes] = []
        while True:
            line = self._line()
            parts.append(line)
            match = _LITERAL.search(line)
            if match is None:
                return b"".join(parts) if len(parts) > 1 else line
            data = self._skip(int(match.group(1)), keep)
            if keep:
                parts.append(b"\r\n" + data)


def _quoted(value: str) -> bytes:
    return b'"' + value.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def untagged_number(reply: Reply, keyword: bytes) -> int | None:
    """The number of an untagged response such as ``* 10000 EXISTS`` or
    ``* OK [HIGHESTMODSEQ 17]`` / ``[UIDVALIDITY 3]`` in a kept reply."""
    pattern = re.compile(rb"^\* (?:OK \[)?" + re.escape(keyword) + rb" (\d+)|^\* (\d+) " + keyword)
    for line in reply.lines:
        match = pattern.search(line)
        if match:
            return int(match.group(1) or match.group(2))
    return None
