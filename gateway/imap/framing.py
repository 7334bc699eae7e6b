"""Sans-I/O IMAP command framing: turns the client's bytes into ``command`` events.

:class:`CommandParser` splits the stream into command lines and the literals between
them (RFC 3501 §4.3, §7.5; RFC 7888 ``{n+}``; RFC 3516 ``~{n}``), announces synchronizing
literals as :class:`ContinuationNeeded` so the server can write ``+``, enforces every
size limit, and resynchronises after an error. Framing never depends on the grammar
(:mod:`gateway.imap.grammar`), so a syntax error can never desynchronise the stream: a
command is consumed whole before it is judged.

The server drives it in the h11 style: ``receive_data(bytes)``, then ``next_event()``
until it returns ``NEED_DATA``. Parsing is lazy (one event per call), so a server can
switch the parser to raw-line mode (IDLE's ``DONE``, AUTHENTICATE responses) or turn
on ``utf8_accept`` between two pipelined commands. Nothing ever raises out of the
public methods: any problem, including a bug here, becomes a :class:`ParseError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import structlog

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.imap.command import NEED_DATA, Command, ContinuationNeeded, Event, ParseError, RawLine
from gateway.imap.grammar import read_command
from gateway.imap.reader import SP, TAG_RE, Incomplete, Literal, Reader, Syntax
from gateway.imap.spool import SPOOL_THRESHOLD, LiteralSpool
from gateway.store.search import MAX_SEARCH_DEPTH

log = structlog.get_logger(__name__)

# ---- limits ---------------------------------------------------------------------------

MAX_LINE_LENGTH = 65536
"""Longest line (the text between two literals or CRLFs). Going over it is fatal: without
a line end in sight the stream cannot be resynchronised."""

MAX_LITERAL_SIZE = DEFAULT_MAX_MESSAGE_SIZE
"""Largest single literal, which is also the largest APPENDable message. Over it: ``NO [TOOBIG]`` for ``{n}`` (the client never sends
the bytes), fatal for ``{n+}`` (the bytes are already on their way)."""

MAX_COMMAND_SIZE = 2 * MAX_LITERAL_SIZE
"""Largest whole command, lines plus literals (a MULTIAPPEND carries several messages)."""

PRELOGIN_MAX_LITERAL_SIZE = 8192
"""Largest literal before login (issue 20 item 2). Dovecot's imap-login bounds a whole
pre-login command, literals included, by its 8,192-octet ``MAX_IMAP_LINE``: a user name or
password never needs more, and a stranger must not make the server hold 64 MiB. The
server applies it (with :func:`prelogin_command_size`) while the session is not
authenticated; the refusal is the same as for any literal over the cap."""


def prelogin_command_size(max_line_length: int, max_literal_size: int) -> int:
    """Largest whole command before login: one full line plus LOGIN's two literals."""
    return max_line_length + 2 + 2 * max_literal_size


MAX_LITERALS = 10_000
"""Most literals in one command; bounds the bookkeeping objects a command can create."""

MAX_NESTING = 32
"""Deepest parenthesis nesting (search key groups, lists)."""

# The deepest SEARCH program (NOT, OR, groups) is the store's MAX_SEARCH_DEPTH: a program
# the parser accepts must not be refused later as too deep to evaluate.

MAX_SEQUENCE_RANGES = 10_000
"""Most comma-separated elements in one sequence set."""

_LITERAL_MARKER_RE = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")


# ---- framing ---------------------------------------------------------------------------

# Framing states.
_START = "start"  # between commands: the next line starts a command (or is a raw line)
_LINE = "line"  # inside a command, after a literal: the next line continues it
_LITERAL = "literal"  # collecting literal bytes
_SKIP_LINE = "skip-line"  # discarding the rest of a refused command, reading its next line
_SKIP_LITERAL = "skip-literal"  # discarding the bytes of a non-synchronizing literal
_FAILED = "failed"  # a fatal error was reported: everything is ignored from now on


class _Fatal(Exception):
    def __init__(self, event: ParseError) -> None:
        super().__init__(event.message)
        self.event = event


class CommandParser:
    """Incremental IMAP command parser: ``receive_data`` bytes, then ``next_event``
    until ``NEED_DATA``.

    Events: a :class:`Command`; :data:`NEED_DATA`; :class:`ContinuationNeeded` once per
    synchronizing literal (write ``+`` and keep reading); :class:`ParseError`, after
    which parsing continues with the next command unless ``fatal``; :class:`RawLine`
    after :meth:`read_raw_line`.

    ``utf8_accept`` may be set at any time (RFC 6855 §3, after ``ENABLE UTF8=ACCEPT``):
    it allows UTF-8 in quoted strings of the commands parsed from then on.
    """

    def __init__(
        self,
        *,
        max_line_length: int = MAX_LINE_LENGTH,
        max_literal_size: int = MAX_LITERAL_SIZE,
        max_command_size: int = MAX_COMMAND_SIZE,
        max_literals: int = MAX_LITERALS,
        max_nesting: int = MAX_NESTING,
        max_search_depth: int = MAX_SEARCH_DEPTH,
        max_sequence_ranges: int = MAX_SEQUENCE_RANGES,
        spool: Callable[[int], LiteralSpool] | None = None,
        spool_threshold: int = SPOOL_THRESHOLD,
        literal_gate: Callable[[int], str | None] | None = None,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_command_size = max_command_size
        self.max_literals = max_literals
        self.max_nesting = max_nesting
        self.max_search_depth = max_search_depth
        self.max_sequence_ranges = max_sequence_ranges
        self.spool = spool
        """Opens a :class:`LiteralSpool` for a literal larger than ``spool_threshold``:
        its bytes go there as they arrive instead of into memory (None: never)."""
        self.spool_threshold = spool_threshold
        self.literal_gate = literal_gate
        """Asked ``gate(size)`` before a literal is accepted; a returned text refuses the
        command with ``NO [LIMIT] text`` (the bytes of a ``{n+}`` literal are skipped).
        The server uses it for its APPEND byte budgets (None: every literal passes)."""
        self.utf8_accept = False
        self.tap: Callable[[str, bytes], None] | None = None
        """Told every line and literal as it is consumed, with what it is: ``"first"``
        (a command's first line), ``"more"`` (a line after a literal), ``"literal"``
        (literal octets, maybe in pieces), ``"raw"`` (a raw line). The protocol trace
        masks secrets with it (:mod:`gateway.imap.trace`); None: nobody listens."""
        self._buf = bytearray()
        self._scanned = 0  # leading bytes of _buf known to hold no LF
        self._raw = False
        self._state = _START
        self._reset()

    # -- public API --

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client. An empty chunk is ignored (EOF is the server's
        business); after a fatal error everything is dropped."""
        if self._state is not _FAILED and data:
            self._buf += data

    def next_event(self) -> Event:
        """The next event, or ``NEED_DATA``. Never raises."""
        try:
            return self._next_event()
        except _Fatal as fatal:
            self._fail()
            return fatal.event
        except Exception:
            log.exception("imap_parser_internal_error", state=self._state)
            self._fail()
            return ParseError(None, "internal error in the command parser", fatal=True)

    def read_raw_line(self) -> None:
        """Return the next complete line as :class:`RawLine` instead of parsing it as a
        command: IDLE's ``DONE`` (RFC 2177 §3) and AUTHENTICATE responses (RFC 3501
        §6.2.2). Normal parsing resumes after that one line."""
        self._raw = True

    def take_unparsed(self) -> bytes:
        """Remove and return the input not parsed yet, between two commands: the stream
        beyond them changes encoding (COMPRESS, RFC 4978 §3)."""
        if self._state is not _START:
            return b""
        data = bytes(self._buf)
        self._buf = bytearray()
        self._scanned = 0
        return data

    @property
    def buffered_size(self) -> int:
        """Bytes held right now: unparsed input plus the command collected so far.

        Once ``next_event`` has returned ``NEED_DATA`` this is at most
        ``max_line_length + 2`` plus ``max_command_size``.
        """
        return len(self._buf) + self._collected

    @property
    def starved(self) -> bool:
        """True when :meth:`next_event` would return ``NEED_DATA`` without looking:
        nothing is buffered and no zero-length literal waits to be finished. The server
        asks this after every command (issue 19: most commands arrive alone), before
        the full :meth:`next_event`."""
        if self._buf:
            return False
        state = self._state
        return (state is not _LITERAL and state is not _SKIP_LITERAL) or self._lit_remaining > 0

    @property
    def failed(self) -> bool:
        """True once a fatal error was reported; the connection should be closed."""
        return self._state is _FAILED

    # -- framing --

    def _reset(self) -> None:
        """Forget the current command (done, refused or skipped) and expect a new one."""
        self._state = _START
        self._segs: list[bytes] = []
        self._lits: list[Literal | None] = []
        self._nlits = 0
        self._size = 0
        self._collected = 0
        self._tag: str | None = None
        self._checked = False
        self._lit_parts: list[bytes] = []
        self._lit_spool: LiteralSpool | None = None
        self._lit_remaining = 0
        self._pending: ParseError | None = None

    def _fail(self) -> None:
        self._reset()
        self._state = _FAILED
        self._buf = bytearray()
        self._scanned = 0

    def _next_event(self) -> Event:
        while True:
            state = self._state
            if state is _LITERAL or state is _SKIP_LITERAL:
                if not self._read_literal(keep=state is _LITERAL):
                    return NEED_DATA
                continue
            if state is _FAILED:
                return NEED_DATA
            line = self._take_line()
            if line is None:
                return NEED_DATA
            if self.tap is not None and (line or state is not _START or self._raw):
                self.tap(
                    "raw"
                    if self._raw and state is _START
                    else "first"
                    if state is _START
                    else "more",
                    line,
                )
            if state is _START:
                if self._raw:
                    self._raw = False
                    return RawLine(line)
                if not line:
                    continue  # a stray CRLF between commands carries nothing
                m = TAG_RE.match(line)
                if m is not None and (m.end() == len(line) or line[m.end()] == SP):
                    self._tag = m.group().decode("ascii")
            if state is _SKIP_LINE:
                event = self._skip_line(line)
            else:
                event = self._command_line(line)
            if event is not None:
                return event

    def _take_line(self) -> bytes | None:
        """The next line without its CRLF (a bare LF is tolerated), or None if incomplete.

        The limit applies to the line's content whether or not its end has arrived, so
        the outcome does not depend on how the stream was split into chunks."""
        buf = self._buf
        i = buf.find(b"\n", self._scanned)
        if i < 0:
            if len(buf) > self.max_line_length + 1:
                raise _Fatal(self._line_too_long())
            self._scanned = len(buf)
            return None
        j = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
        if j > self.max_line_length:
            raise _Fatal(self._line_too_long())
        line = bytes(buf[:j])
        del buf[: i + 1]
        self._scanned = 0
        return line

    def _line_too_long(self) -> ParseError:
        return ParseError(
            self._tag,
            f"line longer than {self.max_line_length} octets",
            code="TOOBIG",
            fatal=True,
        )

    def _read_literal(self, keep: bool) -> bool:
        """Move literal bytes out of the buffer; True once the literal is complete."""
        buf = self._buf
        take = min(len(buf), self._lit_remaining)
        if take:
            if self.tap is not None:
                self.tap("literal", bytes(buf[:take]))
            if keep and self._lit_spool is not None:
                self._lit_spool.write(buf[:take])
            elif keep:
                self._lit_parts.append(bytes(buf[:take]))
                self._collected += take
            del buf[:take]
            self._scanned = 0
            self._lit_remaining -= take
        if self._lit_remaining:
            return False
        if keep:
            lit = self._lits[-1]
            assert lit is not None
            if self._lit_spool is not None:
                lit.data = self._lit_spool.finish()
                self._lit_spool = None
            else:
                lit.data = b"".join(self._lit_parts)
            self._lit_parts = []
            self._state = _LINE
        else:
            self._state = _SKIP_LINE
        return True

    def _literal_marker(self, line: bytes) -> tuple[int, int, bool, bool] | None:
        """``(marker start, size, synchronizing, literal8)`` if the line ends with a
        literal announcement ``{n}``, ``{n+}`` or ``~{n}`` (RFC 3501 §4.3, RFC 7888 §3,
        RFC 3516 §4.2)."""
        if not line.endswith(b"}"):
            return None
        i = line.rfind(b"{")
        if i < 0:
            return None
        if i > 0 and line[i - 1] == 0x7E:
            i -= 1
        m = _LITERAL_MARKER_RE.fullmatch(line, i)
        if m is None:
            return None
        digits = m.group(2)
        size = int(digits) if len(digits) <= 20 else 10**20
        return i, size, not m.group(3), bool(m.group(1))

    def _too_big(self, message: str, code: str = "TOOBIG") -> ParseError:
        return ParseError(self._tag, message, code=code, status="NO")

    def _command_line(self, line: bytes) -> Event | None:
        """One line of the command being collected (its first, or one after a literal)."""
        self._size += len(line) + 2
        marker = self._literal_marker(line)
        if self._size > self.max_command_size:
            return self._refuse(
                self._too_big(f"command longer than {self.max_command_size} octets"), marker
            )
        if marker is None:
            self._segs.append(line)
            self._lits.append(None)
            event = self._parse(complete=True)
            self._reset()
            return event
        start, size, sync, binary = marker
        if size > self.max_literal_size:
            error = self._too_big(f"literal larger than {self.max_literal_size} octets")
            if sync:
                self._reset()
                return error
            raise _Fatal(ParseError(self._tag, error.message, "TOOBIG", fatal=True, status="NO"))
        if self._size + size > self.max_command_size:
            return self._refuse(
                self._too_big(f"command longer than {self.max_command_size} octets"), marker
            )
        if self._nlits >= self.max_literals:
            return self._refuse(
                self._too_big(f"more than {self.max_literals} literals in one command", "LIMIT"),
                marker,
            )
        if self.literal_gate is not None:
            refusal = self.literal_gate(size)
            if refusal is not None:
                return self._refuse(self._too_big(refusal, "LIMIT"), marker)
        self._size += size
        self._nlits += 1
        self._collected += start
        self._segs.append(line[:start])
        self._lits.append(Literal(None, binary))
        if self.spool is not None and size > self.spool_threshold:
            self._lit_spool = self.spool(size)
        self._lit_remaining = size
        self._state = _LITERAL
        if not sync:
            return None
        if not self._checked:
            # RFC 3501 §7.5: a command already wrong before its first synchronizing
            # literal is refused now, so the client never sends the bytes. Later
            # literals are not re-checked, which keeps the work linear.
            self._checked = True
            event = self._parse(complete=False)
            if event is not None:
                self._reset()
                return event
        return ContinuationNeeded(size)

    def _refuse(
        self, error: ParseError, marker: tuple[int, int, bool, bool] | None
    ) -> Event | None:
        """Refuse the command at this line: report now if the client waits (no literal
        follows, or a synchronizing one that will never be sent), else skip to its end."""
        if marker is None or marker[2]:
            self._reset()
            return error
        self._reset()
        self._tag = error.tag
        self._pending = error
        self._lit_remaining = marker[1]
        self._state = _SKIP_LITERAL
        return None

    def _skip_line(self, line: bytes) -> Event | None:
        marker = self._literal_marker(line)
        if marker is not None and not marker[2]:
            if marker[1] > self.max_literal_size:
                raise _Fatal(
                    ParseError(
                        self._tag,
                        f"literal larger than {self.max_literal_size} octets",
                        "TOOBIG",
                        fatal=True,
                        status="NO",
                    )
                )
            self._lit_remaining = marker[1]
            self._state = _SKIP_LITERAL
            return None
        error = self._pending
        self._reset()
        return error

    def _parse(self, complete: bool) -> Command | ParseError | None:
        """Run the grammar over the collected command. With ``complete`` false the last
        literal has not arrived: None means "fine so far"."""
        reader = Reader(
            self._segs,
            self._lits,
            max_nesting=self.max_nesting,
            max_search_depth=self.max_search_depth,
            max_ranges=self.max_sequence_ranges,
            utf8=self.utf8_accept,
        )
        try:
            _tag, command = read_command(reader)
        except Incomplete:
            return None
        except Syntax as e:
            message = f"{reader.cmd}: {e.message}" if reader.cmd else e.message
            return ParseError(self._tag, message, code=e.code, status=e.status)
        except RecursionError:
            return ParseError(self._tag, "command nested too deeply", code="LIMIT")
        except Exception:
            # The command was consumed whole, so even a bug here cannot desynchronise
            # the stream: refuse this command and carry on.
            log.exception("imap_parser_grammar_error", command=reader.cmd)
            return ParseError(self._tag, "could not parse the command")
        if not complete:
            return ParseError(self._tag, f"{reader.cmd}: unexpected literal")
        return command
