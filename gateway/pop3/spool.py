"""Spooling one RETR body as it streams in (RFC 1939 §3): memory first, a temporary file past
:data:`SPOOL_MEMORY_THRESHOLD`, and a size cut-off that keeps the session usable.

The bytes are kept exactly as the server sent them after dot-unstuffing: lines joined with
CRLF, counted as LIST counts them.
"""

from __future__ import annotations

import tempfile
from typing import Any

SPOOL_MEMORY_THRESHOLD = 1024 * 1024
"""A message being received stays in memory up to this size, then spills to a temp file."""

OVERSIZE_DRAIN_LIMIT = 8 * 1024 * 1024
"""After a message passes max_message_size (the server's LIST size was wrong), this many
further octets are read and discarded to keep the session usable; past that the
connection is dropped."""


class MessageSink:
    """Receives one message's dot-unstuffed text from RETR, in runs of whole lines
    joined by CRLF without the final CRLF (the client hands over a chunk at a time).

    Rebuilds the message bytes (each run + CRLF, RFC 1939 §3), collecting runs in a
    list (one append per run: this runs for every chunk of every message) and spilling
    them to a temporary file past :data:`SPOOL_MEMORY_THRESHOLD`, counting octets as
    LIST does. Past ``limit`` it stops keeping data and marks the message ``oversized``;
    past ``limit`` plus :data:`OVERSIZE_DRAIN_LIMIT` it calls ``on_overflow`` (which
    drops the connection). Never raises: an exception inside the line consumer would
    kill the protocol.
    """

    def __init__(self, limit: int, on_overflow: Any = None) -> None:
        self.limit = limit
        self.size = 0
        self.oversized = False
        self.overflowed = False
        self._on_overflow = on_overflow
        self._lines: list[bytes] = []
        self._held = 0
        self._file: Any = None

    def line(self, line: bytes) -> None:
        n = len(line) + 2
        self.size += n
        if self.oversized:
            if not self.overflowed and self.size > self.limit + OVERSIZE_DRAIN_LIMIT:
                self.overflowed = True
                if self._on_overflow is not None:
                    self._on_overflow()
            return
        if self.size > self.limit:
            self.oversized = True
            self._lines = []
            if self._file is not None:
                self._file.close()
                self._file = None
            return
        self._lines.append(line)
        self._held += n
        if self._held > SPOOL_MEMORY_THRESHOLD:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile()
        self._file.write(b"\r\n".join(self._lines) + b"\r\n")
        self._lines = []
        self._held = 0

    def getvalue(self) -> bytes:
        tail = b"\r\n".join(self._lines) + b"\r\n" if self._lines else b""
        if self._file is None:
            return tail
        self._file.seek(0)
        return self._file.read() + tail

    def close(self) -> None:
        self._lines = []
        if self._file is not None:
            self._file.close()
            self._file = None
