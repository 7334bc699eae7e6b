"""Sans-I/O ManageSieve command parser: turns a client's bytes into command events.

RFC 5804 §4 grammar: a command is an atom (case-insensitive) followed by arguments
separated by single spaces, each a *string* (quoted, at most 1024 octets, or a literal)
or a *number*, ending in CRLF. Two things differ from IMAP and shape this module:

* **No continuation for literals.** RFC 5804 only defines ``literal-c2s = "{" number
  "+}" CRLF *OCTET``: the octets follow at once and the server never writes ``+``. So
  there is no ``ContinuationNeeded`` event. A client that sends the IMAP-style ``{n}``
  sends its octets straight after it as well (ManageSieve has no way to ask for them),
  so ``{n}`` is framed exactly like ``{n+}``, as Pigeonhole does; refusing it would
  desynchronise the stream.
* **No BAD.** ManageSieve answers OK, NO or BYE: a malformed command is ``NO``, and the
  stream continues with the next command; only a problem that loses the framing (a line
  over the limit, a literal too large even to skip) is fatal (``BYE``).

The server drives it h11-style: ``receive_data(bytes)``, then ``next_event()`` until
``NEED_DATA``. Framing (lines and literals, every size cap) is kept apart from grammar
(:func:`_parse_arguments`), so a grammar error never desynchronises the stream: a
command is consumed whole before it is judged. :meth:`CommandParser.expect_string`
reads the next client line as one SASL response string (RFC 5804 §2.1) instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# ---- limits -----------------------------------------------------------------------------

MAX_LINE_LENGTH = 8 * 1024
"""Longest line between CRLFs and literals. Over it the stream cannot be resynchronised
(no line end in sight): fatal."""

MAX_LITERAL_SIZE = 64 * 1024
"""Largest literal kept; the integrator passes the script size limit here. A larger
literal is skipped (its octets are already on their way) and the command refused."""

MAX_DISCARD_SIZE = 1024 * 1024
"""Largest over-size literal the parser reads and throws away to stay in step with the
client; beyond it reading would only serve a flood: fatal instead."""

MAX_QUOTED_LENGTH = 1024
"""RFC 5804 §4: ``quoted = DQUOTE *1024QUOTED-CHAR DQUOTE``."""

MAX_LITERALS = 2
"""Most literals in one command: no ManageSieve command has more than two strings."""

NUMBER_MAX = 4294967295
"""RFC 5804 §4 ``number``: 0 to 4,294,967,295."""

# ---- the grammar of each command (RFC 5804 §2) ------------------------------------------

STRING, NUMBER = "string", "number"

SIGNATURES: dict[str, tuple[tuple[str, ...], int]] = {
    # name: (argument kinds, how many of them are required)
    "AUTHENTICATE": ((STRING, STRING), 1),  # §2.1: mechanism [initial response]
    "STARTTLS": ((), 0),  # §2.2
    "LOGOUT": ((), 0),  # §2.3
    "CAPABILITY": ((), 0),  # §2.4
    "HAVESPACE": ((STRING, NUMBER), 2),  # §2.5
    "PUTSCRIPT": ((STRING, STRING), 2),  # §2.6
    "LISTSCRIPTS": ((), 0),  # §2.7
    "SETACTIVE": ((STRING,), 1),  # §2.8
    "GETSCRIPT": ((STRING,), 1),  # §2.9
    "DELETESCRIPT": ((STRING,), 1),  # §2.10
    "RENAMESCRIPT": ((STRING, STRING), 2),  # §2.11.1
    "CHECKSCRIPT": ((STRING,), 1),  # §2.12
    "NOOP": ((STRING,), 0),  # §2.13
    "UNAUTHENTICATE": ((), 0),  # §2.14.1
}
"""Argument kinds of every command this server knows; anything else is unknown."""

_ATOM_RE = re.compile(rb"[A-Za-z]+")
_NUMBER_RE = re.compile(rb"[0-9]+")
_LITERAL_MARKER_RE = re.compile(rb"\{([0-9]+)\+?\}")
_QUOTED_RE = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE_RE = re.compile(rb'\\(["\\])')


# ---- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NeedData:
    """The parser needs more bytes before it can say anything."""


NEED_DATA = NeedData()


@dataclass(frozen=True)
class Command:
    """A well-formed command: ``name`` upper-case, ``args`` as strings (``bytes``, as
    sent: names are decoded by the session) and numbers (``int``), in order."""

    name: str
    args: tuple[bytes | int, ...] = ()


@dataclass(frozen=True)
class StringResponse:
    """The client's line after :meth:`CommandParser.expect_string`: one string (a SASL
    response, RFC 5804 §2.1)."""

    value: bytes


@dataclass(frozen=True)
class ProtocolError:
    """Base of the parser's errors. ``fatal``: the stream cannot be resynchronised; the
    server says BYE and closes. Otherwise it answers NO and reads the next command."""

    message: str
    command: str | None = None

    fatal = False


@dataclass(frozen=True)
class UnknownCommand(ProtocolError):
    """The command word is not one of :data:`SIGNATURES` (RFC 5804 §2: NO)."""


@dataclass(frozen=True)
class SyntaxProblem(ProtocolError):
    """The arguments do not follow the command's grammar."""


@dataclass(frozen=True)
class LiteralTooLarge(ProtocolError):
    """A literal over ``max_literal_size`` was skipped; for PUTSCRIPT/CHECKSCRIPT this
    is the script size limit (``NO (QUOTA/MAXSIZE)``)."""

    size: int = 0
    limit: int = 0


@dataclass(frozen=True)
class LineTooLong(ProtocolError):
    """A line over ``max_line_length``: fatal."""

    fatal = True


@dataclass(frozen=True)
class FloodedLiteral(ProtocolError):
    """A literal larger than even ``max_discard_size``: fatal."""

    fatal = True


Event = Command | StringResponse | ProtocolError | NeedData


# ---- framing ------------------------------------------------------------------------------

_LINE, _LITERAL, _SKIP, _FAILED = "line", "literal", "skip", "failed"


class CommandParser:
    """Incremental ManageSieve parser: ``receive_data`` bytes, then ``next_event`` until
    ``NEED_DATA``. Never raises; a bug in here becomes a fatal :class:`ProtocolError`.

    Memory held at any time is bounded by ``max_line_length`` plus ``max_literals``
    times ``max_literal_size`` plus whatever unread input the caller let accumulate
    (:attr:`buffered_size` lets it stop reading).
    """

    def __init__(
        self,
        *,
        max_line_length: int = MAX_LINE_LENGTH,
        max_literal_size: int = MAX_LITERAL_SIZE,
        max_discard_size: int = MAX_DISCARD_SIZE,
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_discard_size = max(max_discard_size, max_literal_size)
        self._buf = bytearray()
        self._scanned = 0  # leading bytes of _buf known to hold no LF
        self._want_string = False
        self._state = _LINE
        self._reset()

    # -- public API --

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; ignored after a fatal error."""
        if self._state is not _FAILED and data:
            self._buf += data

    def next_event(self) -> Event:
        """The next event, or ``NEED_DATA``."""
        try:
            return self._next_event()
        except Exception:
            log.exception("managesieve.parser_internal_error", state=self._state)
            self._fail()
            return LineTooLong("internal error in the command parser")

    def expect_string(self) -> None:
        """Read the next complete client line as one string (:class:`StringResponse`)
        rather than a command: the answer to a SASL challenge (RFC 5804 §2.1)."""
        self._want_string = True

    @property
    def buffered_size(self) -> int:
        """Bytes held now: unparsed input plus the command collected so far."""
        return len(self._buf) + self._collected

    @property
    def failed(self) -> bool:
        return self._state is _FAILED

    # -- framing --

    def _reset(self) -> None:
        self._segments: list[bytes] = []  # text between literals
        self._literals: list[bytes] = []
        self._parts: list[bytes] = []  # pieces of the literal being read
        self._remaining = 0
        self._collected = 0
        self._too_large: LiteralTooLarge | None = None
        self._name: str | None = None

    def _fail(self) -> None:
        self._reset()
        self._state = _FAILED
        self._buf = bytearray()
        self._scanned = 0

    def _next_event(self) -> Event:
        while True:
            state = self._state
            if state is _FAILED:
                return NEED_DATA
            if state is _LITERAL or state is _SKIP:
                if not self._read_literal(keep=state is _LITERAL):
                    return NEED_DATA
                continue
            line = self._take_line()
            if line is None:
                return NEED_DATA
            if isinstance(line, ProtocolError):
                self._fail()
                return line
            if not self._segments and not line and not self._want_string:
                continue  # an empty line between commands carries nothing
            event = self._line(line)
            if event is not None:
                return event

    def _take_line(self) -> bytes | ProtocolError | None:
        """The next line without CRLF (a bare LF is tolerated); the limit applies
        whether or not the line end has arrived, so chunking cannot change the outcome."""
        buf = self._buf
        i = buf.find(b"\n", self._scanned)
        if i < 0:
            if len(buf) > self.max_line_length + 1:
                return LineTooLong(f"line longer than {self.max_line_length} octets", self._name)
            self._scanned = len(buf)
            return None
        j = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
        if j > self.max_line_length:
            return LineTooLong(f"line longer than {self.max_line_length} octets", self._name)
        line = bytes(buf[:j])
        del buf[: i + 1]
        self._scanned = 0
        return line

    def _line(self, line: bytes) -> Event | None:
        if not self._segments and not self._want_string:
            m = _ATOM_RE.match(line)
            self._name = m.group().decode("ascii").upper() if m else None
        marker = _literal_marker(line)
        if marker is None:
            self._segments.append(line)
            return self._complete()
        start, size = marker
        self._segments.append(line[:start])
        if self._too_large is None and len(self._literals) >= MAX_LITERALS:
            self._too_large = LiteralTooLarge(
                f"more than {MAX_LITERALS} literals in one command", self._name, size, 0
            )
        if self._too_large is None and size > self.max_literal_size:
            self._too_large = LiteralTooLarge(
                f"literal larger than {self.max_literal_size} octets",
                self._name,
                size,
                self.max_literal_size,
            )
        if self._too_large is not None:
            if size > self.max_discard_size:
                self._fail()
                return FloodedLiteral(
                    f"literal larger than {self.max_discard_size} octets", self._name
                )
            self._state = _SKIP
        else:
            self._collected += len(line)
            self._state = _LITERAL
        self._remaining = size
        return None

    def _read_literal(self, keep: bool) -> bool:
        """Move literal octets out of the buffer; True once the literal is complete."""
        buf = self._buf
        take = min(len(buf), self._remaining)
        if take:
            if keep:
                self._parts.append(bytes(buf[:take]))
                self._collected += take
            del buf[:take]
            self._scanned = 0
            self._remaining -= take
        if self._remaining:
            return False
        if keep:
            self._literals.append(b"".join(self._parts))
            self._parts = []
        else:
            self._literals.append(b"")
        self._state = _LINE
        return True

    def _complete(self) -> Event:
        """The command (or string response) is whole: judge it and start afresh."""
        segments, literals = self._segments, self._literals
        too_large, name = self._too_large, self._name
        want_string, self._want_string = self._want_string, False
        self._reset()
        if too_large is not None:
            return too_large
        try:
            if want_string:
                values = _parse_arguments(segments, literals)
                if len(values) != 1 or not isinstance(values[0], bytes):
                    raise _Syntax("expected one string")
                return StringResponse(values[0])
            return _parse_command(segments, literals)
        except _Syntax as e:
            return SyntaxProblem(e.message, name)
        except _Unknown as e:
            return UnknownCommand(e.message, name)


def _literal_marker(line: bytes) -> tuple[int, int] | None:
    """``(marker start, size)`` if the line ends with ``{n+}`` or ``{n}``."""
    if not line.endswith(b"}"):
        return None
    i = line.rfind(b"{")
    if i < 0:
        return None
    m = _LITERAL_MARKER_RE.fullmatch(line, i)
    if m is None:
        return None
    digits = m.group(1)
    return i, int(digits) if len(digits) <= 20 else 10**20


# ---- grammar ------------------------------------------------------------------------------


class _Syntax(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Unknown(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _parse_command(segments: list[bytes], literals: list[bytes]) -> Command:
    first = segments[0]
    m = _ATOM_RE.match(first)
    if m is None:
        raise _Syntax("expected a command name")
    name = m.group().decode("ascii").upper()
    signature = SIGNATURES.get(name)
    if signature is None:
        raise _Unknown("unknown command")
    rest = [first[m.end() :], *segments[1:]]
    values = _parse_arguments(rest, literals, leading_space=True)
    kinds, required = signature
    if len(values) < required:
        raise _Syntax(f"{name}: missing arguments")
    if len(values) > len(kinds):
        raise _Syntax(f"{name}: too many arguments")
    for value, kind in zip(values, kinds, strict=False):
        if (kind == NUMBER) != isinstance(value, int):
            raise _Syntax(f"{name}: expected a {kind}")
    return Command(name, tuple(values))


def _parse_arguments(
    segments: list[bytes], literals: list[bytes], *, leading_space: bool = False
) -> list[bytes | int]:
    """Strings and numbers: ``segments[i]`` is the text before ``literals[i]`` (the
    last segment has no literal after it). Each argument is preceded by one SP when
    ``leading_space`` (after a command name), else separated by one SP."""
    values: list[bytes | int] = []
    for index, text in enumerate(segments):
        pos = 0
        has_literal = index < len(literals)
        while pos < len(text) or has_literal:
            if values or leading_space:
                if pos >= len(text) or text[pos] != 0x20:
                    raise _Syntax("expected a space between arguments")
                pos += 1
            if pos == len(text) and has_literal:
                values.append(literals[index])
                has_literal = False
                break
            c = text[pos : pos + 1]
            if c == b'"':
                m = _QUOTED_RE.match(text, pos)
                if m is None:
                    raise _Syntax("bad quoted string")
                raw = m.group(1)
                if len(raw) > MAX_QUOTED_LENGTH:
                    raise _Syntax(f"quoted string longer than {MAX_QUOTED_LENGTH} octets")
                values.append(_UNESCAPE_RE.sub(rb"\1", raw))
                pos = m.end()
            elif c.isdigit():
                m = _NUMBER_RE.match(text, pos)
                assert m is not None
                number = int(m.group()) if len(m.group()) <= 10 else NUMBER_MAX + 1
                if number > NUMBER_MAX:
                    raise _Syntax("number too large")
                values.append(number)
                pos = m.end()
            else:
                raise _Syntax("expected a string or a number")
    return values
