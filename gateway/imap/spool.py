"""Large literals on disk: a literal over the spool threshold goes to an unnamed temp file.

Issue 20 item 5: eight parallel 60 MB APPENDs held every literal in memory (twice while
it was joined), so the gateway peaked near 600 MB. The parser
(:mod:`gateway.imap.framing`) writes the bytes of a large literal straight into a
:class:`LiteralSpool` as they arrive; the command then carries a :class:`Spooled`, a
read-only ``mmap`` of the file, whose pages are clean page cache the kernel can drop, not
process memory. The store reads the message from that map (SQLite blob I/O), so no
command keeps a copy of a large message on the heap.

Files are created with :func:`tempfile.TemporaryFile` (mode 0600, unlinked at once where
the OS allows), in the listener's spool directory (the state directory's ``spool/`` in a
service) or the system temp directory. Closing a spool frees its file.
"""

from __future__ import annotations

import mmap
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

SPOOL_THRESHOLD = 256 * 1024
"""Literals larger than this go to a temp file instead of memory (smaller ones are the
common case of command arguments and small messages, cheaper to keep as bytes)."""

COPY_CHUNK = 1024 * 1024
"""Bytes moved at a time when a spooled message is copied or rewritten."""

BARE_LF = re.compile(rb"(?<!\r)\n")
"""A line feed not preceded by CR (RFC 5322 §2.1 wants CRLF); APPEND rewrites them."""

SpoolMeter = Callable[[int], None]
"""Told of each change (in bytes, +/-) of the bytes held in spool files."""


def _no_meter(delta: int) -> None:
    pass


class Spooled:
    """A complete spooled literal: ``buffer`` is a read-only ``mmap`` of its bytes.

    ``bytes(spooled)`` copies it into memory (a large literal used as an ordinary
    argument, e.g. a SEARCH string); APPEND hands ``buffer`` to the store instead.
    """

    __slots__ = ("_file", "_meter", "_size", "buffer", "directory", "extra")

    def __init__(
        self, file: IO[bytes], size: int, directory: Path | None, meter: SpoolMeter
    ) -> None:
        self._file = file
        self._size = size
        self._meter = meter
        self.directory = directory
        self.buffer = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ)
        self.extra: list[Spooled] = []
        """Spools derived from this one (a CRLF rewrite), closed along with it."""

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return self.buffer[:]

    def close(self) -> None:
        """Unmap and delete the file. A buffer still exported (a memoryview somebody
        holds) leaves the map to the garbage collector; the file goes anyway."""
        for other in self.extra:
            other.close()
        self.extra = []
        if self._file.closed:
            return
        try:
            self.buffer.close()
        except BufferError:
            pass
        self._file.close()
        self._meter(-self._size)


class LiteralSpool:
    """A literal on its way to disk: ``write`` chunks, then ``finish`` (or ``close``)."""

    def __init__(
        self, size: int, directory: Path | None = None, meter: SpoolMeter = _no_meter
    ) -> None:
        self.size = size
        self.directory = directory
        self._meter = meter
        self._written = 0
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)
        self._done: Spooled | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self._file.write(chunk)
        self._written += len(chunk)
        self._meter(len(chunk))

    def finish(self) -> Spooled:
        """The complete literal, mapped read-only."""
        self._file.flush()
        self._done = Spooled(self._file, self._written, self.directory, self._meter)
        return self._done

    def close(self) -> None:
        if self._done is not None:
            self._done.close()
        elif not self._file.closed:
            self._file.close()
            self._meter(-self._written)


def has_bare_lf(data: Spooled) -> bool:
    """Whether ``data`` has a LF without a CR before it. Counting per chunk runs at memory
    speed, where a regex search for the lone LF walks 60 MB in over a second of reactor
    time."""
    source = data.buffer
    previous_cr = False
    for start in range(0, len(data), COPY_CHUNK):
        chunk = source[start : start + COPY_CHUNK]
        leading = chunk[:1] == b"\n"  # its CR, if any, ended the chunk before
        if leading and not previous_cr:
            return True
        if chunk.count(b"\n") != chunk.count(b"\r\n") + leading:
            return True
        previous_cr = chunk[-1:] == b"\r"
    return False


def crlf_spooled(data: Spooled) -> Spooled:
    """``data`` with every bare LF turned into CRLF, like
    :func:`gateway.imap.messages.crlf_lines` but chunk by chunk into a new spool, so a
    large Unix-text APPEND never sits in memory. ``data`` itself when it has no bare LF.
    The new spool is closed together with ``data``."""
    source = data.buffer
    if not has_bare_lf(data):
        return data
    out = LiteralSpool(0, data.directory, data._meter)
    previous_cr = False
    for start in range(0, len(data), COPY_CHUNK):
        chunk = source[start : start + COPY_CHUNK]
        if chunk[:1] == b"\n":
            # The regex cannot look back into the previous chunk: decide this LF here.
            out.write(b"\n" if previous_cr else b"\r\n")
            chunk = chunk[1:]
            previous_cr = False
        if chunk:
            out.write(BARE_LF.sub(b"\r\n", chunk))
            previous_cr = chunk[-1:] == b"\r"
    converted = out.finish()
    data.extra.append(converted)
    return converted
