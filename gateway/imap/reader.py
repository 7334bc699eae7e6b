"""The token reader of the IMAP command grammar: one complete command as a cursor.

:class:`Reader` reads the lexical pieces RFC 3501 §9 builds commands from (atoms,
astrings, quoted strings, literals, numbers, sequence sets, flags, dates) and bounds the
nesting of parentheses; the grammar of each command (:mod:`gateway.imap.grammar`,
:mod:`gateway.imap.search_grammar`) is written on top of it. The framing
(:mod:`gateway.imap.framing`) hands it a command only once it has been consumed whole.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import NoReturn, TypeVar

from gateway.core.criteria import SeqRange, SequenceSet
from gateway.core.flags import canonical_flag
from gateway.imap.spool import Spooled

T = TypeVar("T")

NUMBER_MAX = 2**32 - 1  # RFC 3501 §9 number
NUMBER64_MAX = 2**63 - 1  # RFC 7162 mod-sequence-value, RFC 9051 number64

# ---- lexical classes (RFC 3501 §9) ----------------------------------------------------

# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM_CHARS = rb"\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e"
_ATOM_RE = re.compile(rb"[" + _ATOM_CHARS + rb"]+")
_ASTRING_RE = re.compile(rb"[" + _ATOM_CHARS + rb"\x5d]+")  # ASTRING-CHAR adds "]"
_LIST_MAILBOX_RE = re.compile(rb"[" + _ATOM_CHARS + rb"\x25\x2a\x5d]+")  # list-char
TAG_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d\x5e-\x7a\x7c-\x7e]+")  # no "+"
_FLAG_RE = re.compile(rb"\\?[" + _ATOM_CHARS + rb"]+")
_NUMBER_RE = re.compile(rb"[0-9]+")
_SEQSET_TOKEN_RE = re.compile(rb"[0-9*:,]+")
_SEQ_NUM = rb"(?:[0-9]+|\*)"
_SEQ_RANGE = _SEQ_NUM + rb"(?::" + _SEQ_NUM + rb")?"
_SEQSET_RE = re.compile(_SEQ_RANGE + rb"(?:," + _SEQ_RANGE + rb")*")
# TEXT-CHAR minus " and \, plus 8-bit octets (checked as UTF-8 after matching)
_QUOTED_CHARS_UTF8 = rb"\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\xff"
_QUOTED_UTF8_RE = re.compile(rb'"((?:[' + _QUOTED_CHARS_UTF8 + rb']++|\\["\\])*+)"')
_QUOTED_PREFIX_UTF8_RE = re.compile(rb"(?:[" + _QUOTED_CHARS_UTF8 + rb']++|\\["\\])*+')
_UNESCAPE_RE = re.compile(rb'\\(["\\])')
_SEARCH_DATE_RE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME_RE = re.compile(
    rb'"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)

DQ, LPAREN, RPAREN, SP, LBRACKET = 0x22, 0x28, 0x29, 0x20, 0x5B

_MONTHS = {
    m.encode(): i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}


def show(text: bytes, limit: int = 32) -> str:
    """A short, printable rendering of client text for an error message."""
    shown = text[:limit].decode("ascii", "backslashreplace")
    return shown + "..." if len(text) > limit else shown


class Syntax(Exception):
    """The command does not follow the grammar (or breaks a grammar-level limit)."""

    def __init__(self, message: str, code: str | None = None, status: str = "BAD") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class Incomplete(Exception):
    """The grammar reached a literal whose bytes have not arrived (prefix check only)."""


class Literal:
    """A literal within a command: ``data`` is None until its bytes have arrived."""

    __slots__ = ("binary", "data")

    def __init__(self, data: bytes | Spooled | None, binary: bool) -> None:
        self.data = data
        self.binary = binary


class Reader:
    """A cursor over one command, as text segments separated by literals.

    ``segs[i]`` is the text before literal ``lits[i]`` (the literal marker itself is
    stripped); ``lits[-1]`` is None for a complete command. Every method either
    consumes what it reads or raises ``Syntax``; there is no backtracking, because
    IMAP's grammar decides every alternative on its next character or word.
    """

    __slots__ = (
        "_i",
        "_lits",
        "_segs",
        "cmd",
        "depth",
        "end",
        "max_nesting",
        "max_ranges",
        "max_search_depth",
        "octets_ok",
        "pos",
        "search_depth",
        "search_peak",
        "text",
        "utf8",
    )

    def __init__(
        self,
        segs: list[bytes],
        lits: list[Literal | None],
        *,
        max_nesting: int,
        max_search_depth: int,
        max_ranges: int,
        utf8: bool,
    ) -> None:
        self._segs = segs
        self._lits = lits
        self._i = 0
        self.text = segs[0]
        self.pos = 0
        self.end = len(self.text)
        self.depth = 0
        self.search_depth = 0  # SEARCH keys open right now (NOT, OR, groups)
        self.search_peak = 0  # the deepest criteria-tree level reached so far
        self.max_nesting = max_nesting
        self.max_search_depth = max_search_depth
        self.max_ranges = max_ranges
        self.utf8 = utf8
        self.cmd = ""  # the command words, for error messages ("UID FETCH")
        self.octets_ok = False
        """While reading a mailbox name: 8-bit octets need not be UTF-8 (see :meth:`mailbox`)."""

    # -- positions --

    def fail(self, what: str) -> NoReturn:
        raise Syntax(f"expected {what}")

    def peek(self) -> int:
        """The next byte of the current line, or -1 at its end (a literal or the end)."""
        return self.text[self.pos] if self.pos < self.end else -1

    def at_end(self) -> bool:
        return self.pos >= self.end and self._lits[self._i] is None

    def at_literal(self) -> bool:
        return self.pos >= self.end and self._lits[self._i] is not None

    def rest_of_line(self) -> bytes | None:
        """The unread rest of the command when no literal follows (a parse cache's key),
        else None."""
        if self._lits[self._i] is not None:
            return None
        return self.text[self.pos : self.end]

    def skip_line(self) -> None:
        """Consume the rest of the current line (its parse came from a cache)."""
        self.pos = self.end

    def finish(self) -> None:
        """RFC 3501 §2.2.1: a command ends with CRLF, nothing may follow its arguments."""
        if not self.at_end():
            self.fail("the end of the command")

    def sp(self, what: str) -> None:
        """One space, then ``what`` (named in the error if either is missing)."""
        if self.pos < self.end and self.text[self.pos] == SP:
            self.pos += 1
        elif self.at_end():
            self.fail(what)
        else:
            self.fail(f"a space before {what}")

    def take(self, token: bytes) -> bool:
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str) -> None:
        if not self.take(token):
            self.fail(what)

    def open(self, what: str) -> None:
        """An opening parenthesis; nesting beyond the limit is refused (BAD [LIMIT])."""
        if not self.take(b"("):
            self.fail(what)
        self.depth += 1
        if self.depth > self.max_nesting:
            raise Syntax(f"parentheses nested deeper than {self.max_nesting}", code="LIMIT")

    def take_close(self) -> bool:
        if self.take(b")"):
            self.depth -= 1
            return True
        return False

    def close(self, what: str = '")"') -> None:
        if not self.take_close():
            self.fail(what)

    def paren_list(self, item: Callable[[], T], what: str, *, empty_ok: bool = False) -> list[T]:
        """``"(" item *(SP item) ")"``, or ``"(" ")"`` when ``empty_ok``."""
        self.open(f"a parenthesised list of {what}")
        out: list[T] = []
        if self.take_close():
            if not empty_ok:
                self.fail(what)
            return out
        while True:
            out.append(item())
            if self.take_close():
                return out
            self.sp(what)

    # -- tokens --

    def atom(self, what: str) -> bytes:
        m = _ATOM_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        self.pos = m.end()
        return m.group()

    def word(self, what: str) -> str:
        """An atom as an upper-case keyword (IMAP keywords are case-insensitive)."""
        return self.atom(what).decode("ascii").upper()

    def peek_word(self) -> str | None:
        m = _ATOM_RE.match(self.text, self.pos)
        return m.group().decode("ascii").upper() if m else None

    def number(self, what: str, maximum: int = NUMBER_MAX, minimum: int = 0) -> int:
        m = _NUMBER_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        digits = m.group()
        value = int(digits) if len(digits) <= 20 else maximum + 1
        if not minimum <= value <= maximum:
            raise Syntax(f"{what} out of range ({minimum} to {maximum})")
        self.pos = m.end()
        return value

    def nz_number(self, what: str) -> int:
        return self.number(what, NUMBER_MAX, 1)

    def modseq(self, what: str, zero_ok: bool) -> int:
        """RFC 7162 §7 mod-sequence-value (63-bit), or mod-sequence-valzer with ``zero_ok``."""
        return self.number(what, NUMBER64_MAX, 0 if zero_ok else 1)

    def quoted(self) -> bytes:
        """RFC 3501 quoted string. 8-bit text is accepted when it is valid UTF-8, also
        before ENABLE UTF8=ACCEPT: RFC 3501 §9 allows only 7-bit TEXT-CHARs, but clients
        routinely send ``SEARCH CHARSET UTF-8 SUBJECT "Grüße"`` quoted, and Dovecot reads
        it (RFC 9051 §4.3 and RFC 6855 §3 make quoted UTF-8 the norm). Invalid UTF-8
        stays a BAD; where a name must be modified UTF-7 the session refuses 8-bit."""
        m = _QUOTED_UTF8_RE.match(self.text, self.pos)
        if m is None:
            self._quoted_problem()
        self.pos = m.end()
        raw = m.group(1)
        if not raw.isascii() and not self.octets_ok:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Syntax("a quoted string that is not valid UTF-8") from None
        if b"\\" in raw:
            raw = _UNESCAPE_RE.sub(rb"\1", raw)
        return raw

    def _quoted_problem(self) -> NoReturn:
        """Explain why a quoted string did not parse."""
        if self.peek() != DQ:
            self.fail("a quoted string")
        stop = _QUOTED_PREFIX_UTF8_RE.match(self.text, self.pos + 1).end()
        if stop >= self.end:
            raise Syntax("quoted string has no closing quote")
        bad = self.text[stop]
        if bad == 0x5C:
            raise Syntax('only \\\\ and \\" may be escaped in a quoted string')
        raise Syntax("control character in a quoted string")

    def literal(self, binary_ok: bool = False) -> bytes:
        """The next literal's bytes (a spooled one is read into memory: only APPEND's
        message data stays on disk, through :meth:`message_literal`)."""
        data = self.message_literal(binary_ok)
        return data if isinstance(data, bytes) else bytes(data)

    def message_literal(self, binary_ok: bool = False) -> bytes | Spooled:
        """The next literal as the parser kept it: bytes, or a :class:`Spooled` file."""
        lit = self._lits[self._i]
        if lit is None or self.pos < self.end:
            self.fail("a literal")
        if lit.data is None:
            raise Incomplete
        if lit.binary and not binary_ok:
            raise Syntax("literal8 (~{n}) is only allowed for APPEND message data")
        self._i += 1
        self.text = self._segs[self._i]
        self.pos = 0
        self.end = len(self.text)
        return lit.data

    def string(self, what: str) -> bytes:
        """RFC 3501 string = quoted / literal."""
        if self.peek() == DQ:
            return self.quoted()
        if self.at_literal():
            return self.literal()
        self.fail(what)

    def astring(self, what: str) -> bytes:
        """RFC 3501 astring = 1*ASTRING-CHAR / string."""
        pos = self.pos
        if pos < self.end:
            if self.text[pos] == DQ:
                return self.quoted()
            m = _ASTRING_RE.match(self.text, pos)
            if m is None:
                self.fail(what)
            self.pos = m.end()
            return m.group()
        if self._lits[self._i] is not None:
            return self.literal()
        self.fail(what)

    def mailbox(self, what: str) -> bytes:
        """RFC 3501 ``mailbox`` (an astring) with any 8-bit octets kept as sent.

        A quoted name that is not valid UTF-8 (a Latin-1 ``"caf\xe9"``) is a well-formed
        command naming a mailbox that cannot exist: the session answers NO [CANNOT]
        (RFC 3501 §6.3.1; :meth:`gateway.imap.session.IMAPSession.mailbox_name`), as
        Dovecot does, rather than BAD for the whole command.
        """
        self.octets_ok = True
        try:
            return self.astring(what)
        finally:
            self.octets_ok = False

    def nstring(self, what: str) -> bytes | None:
        if self.peek_word() == "NIL":
            self.pos += 3
            return None
        return self.string(what)

    def list_mailbox(self) -> bytes:
        """RFC 3501 list-mailbox = 1*list-char / string (``%`` and ``*`` unquoted)."""
        m = _LIST_MAILBOX_RE.match(self.text, self.pos)
        if m is not None:
            self.pos = m.end()
            return m.group()
        self.octets_ok = True  # as for :meth:`mailbox`: a pattern no name matches
        try:
            return self.string("a mailbox pattern")
        finally:
            self.octets_ok = False

    def utf8_text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Syntax(f"{what} is not valid UTF-8") from None

    def seqset(self, what: str = "a sequence set") -> SequenceSet:
        """RFC 3501 sequence-set; ``*`` becomes None, 0 is refused. RFC 5182 §2.1 ``$``
        (the saved search result) is a set of its own, ``SequenceSet((), saved=True)``."""
        if self.text.startswith(b"$", self.pos):
            self.pos += 1
            return SequenceSet((), saved=True)
        m = _SEQSET_TOKEN_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        token = m.group()
        if token.isdigit():  # one number, the commonest set (mbsync: UID FETCH n ...)
            self.pos = m.end()
            number = self._seq_number(token)
            return SequenceSet((SeqRange(number, number),))
        if token.count(b",") >= self.max_ranges:
            raise Syntax(f"sequence set has more than {self.max_ranges} elements", code="LIMIT")
        if _SEQSET_RE.fullmatch(token) is None:
            self.fail(what)
        self.pos = m.end()
        ranges = []
        for element in token.split(b","):
            first, colon, last = element.partition(b":")
            start = self._seq_number(first)
            ranges.append(SeqRange(start, self._seq_number(last) if colon else start))
        return SequenceSet(tuple(ranges))

    @staticmethod
    def _seq_number(digits: bytes) -> int | None:
        if digits == b"*":
            return None
        value = int(digits) if len(digits) <= 10 else NUMBER_MAX + 1
        if value == 0:
            raise Syntax("sequence numbers and UIDs start at 1, 0 is not valid")
        if value > NUMBER_MAX:
            raise Syntax(f"sequence number {show(digits)} is larger than {NUMBER_MAX}")
        return value

    def flag(self, what: str = "a flag") -> str:
        """RFC 3501 flag: system flags get their canonical case, keywords stay as sent."""
        m = _FLAG_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        self.pos = m.end()
        flag = m.group().decode("ascii")
        if flag[0] == "\\":
            return canonical_flag(flag)
        return flag

    def date_time(self) -> datetime.datetime:
        """RFC 3501 date-time ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (day may be space-padded)."""
        m = _DATE_TIME_RE.match(self.text, self.pos)
        if m is None:
            self.fail('a date-time like "17-Jul-1996 02:44:25 -0700"')
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        month = _MONTHS.get(mon.upper())
        zone_minutes = int(zh) * 60 + int(zm)
        if month is None or int(zm) > 59 or zone_minutes >= 24 * 60:
            raise Syntax(f"invalid date-time {show(m.group())}")
        offset = datetime.timedelta(minutes=-zone_minutes if sign == b"-" else zone_minutes)
        try:
            value = datetime.datetime(
                int(year),
                month,
                int(day),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=datetime.timezone(offset),
            )
        except ValueError:
            raise Syntax(f"invalid date-time {show(m.group())}") from None
        self.pos = m.end()
        return value

    def search_date(self) -> datetime.date:
        """RFC 3501 date = date-text / DQUOTE date-text DQUOTE, ``d-Mon-yyyy``."""
        quoted = self.take(b'"')
        m = _SEARCH_DATE_RE.match(self.text, self.pos)
        if m is None:
            self.fail("a date like 1-Feb-2024")
        self.pos = m.end()
        if quoted and not self.take(b'"'):
            self.fail("a closing quote after the date")
        day, mon, year = m.groups()
        month = _MONTHS.get(mon.upper())
        try:
            if month is None:
                raise ValueError
            return datetime.date(int(year), month, int(day))
        except ValueError:
            raise Syntax(f"invalid date {show(m.group())}") from None
