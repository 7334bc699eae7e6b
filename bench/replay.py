"""A measuring instrument, not part of the gateway: an IMAP server that costs (almost) nothing.

mbsync's first full sync is bound by mbsync itself (its CPU, and an fsync plus an
fdatasync per message into the Maildir), so how close popgate and Dovecot come to the
best any server could do is only visible next to that best. This module measures it:

* :class:`Recorder` is a TCP proxy that records one real session (mbsync against
  popgate): the client's command lines and every octet the server sent, cut into one
  answer per command (untagged responses up to and including the tagged completion).
* :class:`Replayer` (sans-I/O) and :func:`serve` answer the same client's same commands
  from that transcript: each answer is already on disk, in order, and leaves with
  ``os.sendfile`` (no parsing beyond finding CRLF, no store, no formatting; the page
  cache holds the file after recording). mbsync's time against it is its time against an
  infinitely fast server; the process's own CPU is reported next to it.

It understands exactly what this needs and refuses the rest loudly: client commands are
single lines (a command with a literal is refused when recording), answers are matched to
commands by order and the recording checks each tagged completion carries the next
command's tag (a server may answer pipelined commands in order, RFC 9051 §5.5; popgate
does), and the replay closes the connection at the first command that differs from the
recording (the client then fails, and the bench's message count with it).

    python -m bench.replay record --upstream 127.0.0.1:1143 DIR   # proxy one session
    python -m bench.replay serve DIR                                # prints "port N"
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SERVER_FILE = "server.bin"
"""Every octet the recorded server sent, greeting first."""

INDEX_FILE = "index.json"
"""The greeting's length and each command line with the length of its answer."""

MAX_LINE = 8192
"""The longest client command line accepted (mbsync's longest here is ~60 octets)."""

PUMP_CHUNK = 256 * 1024
"""Octets per recv while proxying."""

START_TIMEOUT = 30.0
"""Seconds the replay process may take to load its index and listen."""

_REPO_ROOT = Path(__file__).resolve().parent.parent

_LITERAL = re.compile(rb"\{(\d+)\+?\}\Z")


class TranscriptError(Exception):
    """The session is not one this instrument can record or replay faithfully."""


@dataclass(frozen=True)
class Transcript:
    """A recorded session: ``server.bin`` in ``directory`` and, in order, each command
    line (CRLF included) with the octets of its answer, after a greeting of
    ``greeting`` octets."""

    directory: Path
    greeting: int
    exchanges: tuple[tuple[bytes, int], ...]

    @property
    def server_file(self) -> Path:
        return self.directory / SERVER_FILE

    def save(self) -> None:
        index = {
            "greeting": self.greeting,
            "exchanges": [[line.decode("latin-1"), size] for line, size in self.exchanges],
        }
        (self.directory / INDEX_FILE).write_text(json.dumps(index))

    @classmethod
    def load(cls, directory: Path) -> Transcript:
        index = json.loads((directory / INDEX_FILE).read_text())
        exchanges = tuple((line.encode("latin-1"), size) for line, size in index["exchanges"])
        return cls(directory, index["greeting"], exchanges)


def split_commands(client: bytes) -> list[bytes]:
    """The client's stream as command lines (CRLF kept); literals and a trailing partial
    line are refused (RFC 9051 §4.3: a literal would need the server's continuation)."""
    lines = client.split(b"\r\n")
    if lines[-1]:
        raise TranscriptError(f"client stream ends inside a line: {lines[-1][:60]!r}")
    commands = [line + b"\r\n" for line in lines[:-1]]
    for line in commands:
        if _LITERAL.search(line[:-2]):
            raise TranscriptError(f"command with a literal: {line[:60]!r}")
    return commands


def answer_lengths(server: bytes | mmap.mmap, tags: Sequence[bytes]) -> tuple[int, list[int]]:
    """The greeting's length and, for each command tag in order, the octets of its answer.

    Walks the server's logical lines (a line ending in ``{n}`` continues after n octets of
    literal, RFC 9051 §4.3); a line that starts with a tag ends the current command's
    answer and must carry the next expected tag.
    """
    end = server.find(b"\r\n")
    if end < 0 or not server[:2] == b"* ":
        raise TranscriptError("no untagged greeting")
    greeting = end + 2
    lengths: list[int] = []
    start = position = greeting
    line_start = position
    while len(lengths) < len(tags):
        eol = server.find(b"\r\n", position)
        if eol < 0:
            raise TranscriptError(f"server stream ends before the answer to {tags[len(lengths)]!r}")
        # Only this segment of the line (after any literal) can announce the next literal.
        literal = _LITERAL.search(server[max(position, eol - 24) : eol])
        if literal is not None:
            position = eol + 2 + int(literal.group(1))
            continue
        position = eol + 2
        first = server[line_start : min(eol, line_start + 64)].split(b" ", 1)[0]
        line_start = position
        if first in (b"*", b"+"):
            continue
        expected = tags[len(lengths)]
        if first != expected:
            raise TranscriptError(f"completion {first!r} where {expected!r} was due")
        lengths.append(position - start)
        start = position
    if position != len(server):
        raise TranscriptError(f"{len(server) - position} octets after the last answer")
    return greeting, lengths


class Recorder:
    """Proxy exactly one client connection to ``upstream`` and record it into ``directory``.

    Use as a context manager around one client run against ``127.0.0.1:port``; then
    :meth:`transcript` cuts the recording into answers (and saves the index).
    """

    def __init__(self, upstream: tuple[str, int], directory: Path) -> None:
        self.upstream = upstream
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._client_bytes = bytearray()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="replay-recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError as error:  # closed before anyone connected
            self._errors.append(error)
            return
        with client, socket.create_connection(self.upstream) as server:
            with open(self.directory / SERVER_FILE, "wb") as record:
                up = threading.Thread(target=self._pump, args=(client, server, None))
                up.start()
                self._pump(server, client, record)
                up.join()

    def wait(self) -> None:
        """Until the recorded connection has closed both ways."""
        self._thread.join()

    def _pump(self, source: socket.socket, sink: socket.socket, record: BinaryIO | None) -> None:
        """Copy ``source`` to ``sink`` until EOF, recording; a sink that went away (a client
        that hung up after its LOGOUT) stops the copy, not the recording."""
        sink_open = True
        try:
            while chunk := source.recv(PUMP_CHUNK):
                if record is None:
                    self._client_bytes += chunk
                else:
                    record.write(chunk)
                if sink_open:
                    try:
                        sink.sendall(chunk)
                    except OSError:
                        sink_open = False
        except OSError as error:
            self._errors.append(error)
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def transcript(self) -> Transcript:
        if self._thread.is_alive() or self._errors:
            raise TranscriptError(f"recording incomplete: {self._errors or 'still running'}")
        commands = split_commands(bytes(self._client_bytes))
        tags = [line.split(b" ", 1)[0] for line in commands]
        with open(self.directory / SERVER_FILE, "rb") as handle:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as server:
                greeting, lengths = answer_lengths(server, tags)
        transcript = Transcript(
            self.directory, greeting, tuple(zip(commands, lengths, strict=True))
        )
        transcript.save()
        return transcript


class Replayer:
    """One connection's replay, sans I/O: feed the client's bytes, get back the range of
    ``server.bin`` (offset, length) that answers every complete command among them."""

    def __init__(self, transcript: Transcript) -> None:
        self._exchanges = transcript.exchanges
        self._next = 0
        self._offset = transcript.greeting
        self._pending = b""

    @property
    def finished(self) -> bool:
        """Every recorded command answered: the recorded server then closed (after its
        LOGOUT's BYE, RFC 9051 §6.1.3), and a client may wait for that close."""
        return self._next == len(self._exchanges)

    @staticmethod
    def greeting(transcript: Transcript) -> tuple[int, int]:
        return 0, transcript.greeting

    def receive(self, data: bytes) -> tuple[int, int]:
        """Raises :class:`TranscriptError` at a command the recording does not have next."""
        buffer = self._pending + data
        start, position = self._offset, 0
        while (end := buffer.find(b"\r\n", position)) >= 0:
            line = buffer[position : end + 2]
            position = end + 2
            if self._next >= len(self._exchanges) or line != self._exchanges[self._next][0]:
                raise TranscriptError(f"command {self._next + 1} not in the recording: {line!r}")
            self._offset += self._exchanges[self._next][1]
            self._next += 1
        self._pending = buffer[position:]
        if len(self._pending) > MAX_LINE:
            raise TranscriptError(f"command line over {MAX_LINE} octets")
        return start, self._offset - start


def _send_range(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    while count > 0:
        sent = os.sendfile(sock.fileno(), fd, offset, count)
        if sent == 0:
            raise ConnectionError("client closed while we were answering")
        offset, count = offset + sent, count - sent


def serve(transcript: Transcript, listener: socket.socket) -> None:
    """Answer connections one after another, each from the start of the transcript
    (mbsync opens one IMAP connection per sync); runs until the process is stopped."""
    with open(transcript.server_file, "rb") as handle:
        fd = handle.fileno()
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as popgate
                replayer = Replayer(transcript)
                try:
                    _send_range(conn, fd, *Replayer.greeting(transcript))
                    while not replayer.finished and (data := conn.recv(PUMP_CHUNK)):
                        _send_range(conn, fd, *replayer.receive(data))
                except (TranscriptError, OSError) as error:
                    print(f"replay: {error}", file=sys.stderr, flush=True)


class ReplayServer:
    """``python -m bench.replay serve`` as a child process of its own, so its CPU seconds
    (``/proc/PID/stat``) are its own and the bench process stays free."""

    def __init__(self, directory: Path, log_path: Path) -> None:
        self.directory = directory
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> ReplayServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.replay", "serve", str(self.directory)],
                cwd=_REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        ready = threading.Timer(START_TIMEOUT, self.process.kill)
        ready.start()
        line = self.process.stdout.readline()
        ready.cancel()
        if not line.startswith(b"port "):
            self.__exit__()
            raise RuntimeError(f"replay server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    record = sub.add_parser("record", help="proxy one session to --upstream and record it")
    record.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    record.add_argument("directory", type=Path)
    play = sub.add_parser("serve", help="answer from a recorded transcript")
    play.add_argument("--port", type=int, default=0)
    play.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.action == "record":
        host, _, port = args.upstream.rpartition(":")
        with Recorder((host, int(port)), args.directory) as recorder:
            print(f"port {recorder.port}", flush=True)
            recorder.wait()
        transcript = recorder.transcript()
        print(f"recorded {len(transcript.exchanges)} commands", flush=True)
        return 0
    transcript = Transcript.load(args.directory)
    with socket.create_server(("127.0.0.1", args.port)) as listener:
        print(f"port {listener.getsockname()[1]}", flush=True)
        serve(transcript, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
