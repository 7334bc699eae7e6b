"""The per-user protocol trace's files: ``state_dir/trace/USER/``, one file per connection.

Like Dovecot's rawlog, but masked (:mod:`gateway.imap.trace`) and bounded: each file is
at most :data:`MAX_TRACE_FILE` octets (then the connection goes on in a new file), and a
user's directory at most :data:`MAX_TRACE_PER_USER` (the oldest files are deleted when a
new one starts; with N connections writing at once the directory can pass it by at most
N files). Directories are 0700 and files 0600: a trace shows a user's mailbox names,
headers and habits. Before login the trace is kept in memory (at most
:data:`MAX_PRELOGIN_TRACE`), since only the login says whose it is; it is written out
when the user is one of ``[debug] trace_users`` and dropped otherwise.

Lines read ``HH:MM:SS.mmm C: ...`` (client) and ``HH:MM:SS.mmm S: ...`` (server). Writes
are buffered and flushed at the end of each burst of output (on the reactor thread:
tracing is a debugging aid for a few users, a local file write is cheap next to it).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import structlog

from gateway.imap.trace import ClientMasker, ServerMasker

log = structlog.get_logger(__name__)

MAX_TRACE_FILE = 8 * 1024 * 1024
"""Largest trace file; the connection's trace goes on in a new file after it."""

MAX_TRACE_PER_USER = 64 * 1024 * 1024
"""Largest total of one user's trace directory; the oldest files go first."""

MAX_PRELOGIN_TRACE = 64 * 1024
"""Trace kept in memory before login; beyond it the start of the conversation is cut."""

TRACE_DIR = "trace"
"""Under the state directory."""

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]")


def user_dir(root: Path, user: str) -> Path:
    """The user's trace directory (the name made safe as one path component)."""
    name = _SAFE_NAME.sub("_", user).lstrip(".") or "_"
    return root / name


class ConnectionTrace:
    """One connection's trace: the two maskers, the formatting, memory then a file."""

    def __init__(self, peer: str, clock: Callable[[], float] = time.time) -> None:
        self.peer = peer
        self._clock = clock
        self.client = ClientMasker(lambda data: self._out(b"C", data))
        self.server = ServerMasker(lambda data: self._out(b"S", data))
        self._memory: bytearray | None = bytearray()
        self._cut = False
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._directory: Path | None = None
        self._written = 0
        self._part = 0
        self._direction = b""
        self._at_line_start = True
        self._started = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock()))

    @property
    def attached(self) -> bool:
        return self._file is not None

    # -- formatting --

    def _out(self, direction: bytes, data: bytes) -> None:
        if direction != self._direction and not self._at_line_start:
            self._write(b"\n")
            self._at_line_start = True
        self._direction = direction
        start = 0
        while start < len(data):
            if self._at_line_start:
                now = self._clock()
                stamp = time.strftime("%H:%M:%S", time.gmtime(now))
                self._write(b"%s.%03d %s: " % (stamp.encode(), int(now * 1000) % 1000, direction))
                self._at_line_start = False
            end = data.find(b"\n", start)
            if end < 0:
                self._write(data[start:])
                return
            self._write(data[start : end + 1])
            self._at_line_start = True
            start = end + 1

    def _write(self, data: bytes) -> None:
        if self._memory is not None:
            if len(self._memory) + len(data) > MAX_PRELOGIN_TRACE:
                self._cut = True
                return
            self._memory += data
            return
        if self._file is None:
            return
        if self._written + len(data) > MAX_TRACE_FILE:
            self._next_file()
            if self._file is None:
                return
        self._file.write(data)
        self._written += len(data)

    # -- memory, then files --

    def attach(self, root: Path, user: str) -> None:
        """The connection belongs to a traced user: from now on into files under
        ``root/USER/``, starting with what was kept in memory."""
        if self._file is not None:
            return
        self._directory = user_dir(root, user)
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("imap.trace_error", error=exc.strerror, peer=self.peer)
            self._memory = None
            return
        memory, self._memory = self._memory or bytearray(), None
        self._next_file()
        if self._cut:
            self._write(
                b"[... start of the conversation not kept: over %d octets]\n" % MAX_PRELOGIN_TRACE
            )
        self._write(bytes(memory))

    def _next_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        assert self._directory is not None
        self._part += 1
        self._make_room(self._directory)
        peer = _SAFE_NAME.sub("_", self.peer)
        path = (
            self._directory / f"{self._started}-{peer}-{os.getpid()}-{id(self):x}.{self._part}.log"
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            log.warning("imap.trace_error", error=exc.strerror, peer=self.peer)
            return
        self._file = os.fdopen(fd, "wb", buffering=64 * 1024)
        self._path = path
        self._written = 0

    def _make_room(self, directory: Path) -> None:
        """Delete the user's oldest trace files until a new full file fits the cap."""
        try:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in directory.glob("*.log")]
        except OSError:
            return
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total + MAX_TRACE_FILE <= MAX_TRACE_PER_USER:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                log.warning("imap.trace_error", error=exc.strerror, peer=self.peer)

    def close(self) -> None:
        """The connection ended (or its user is no longer traced)."""
        self.client.close()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        self._memory = None
