"""Sans-I/O IMAP4rev1 command parser: turns the client's bytes into ``command`` events.

The parser owns two layers, kept apart on purpose:

* **Framing** (``CommandParser``): splits the stream into command lines and the
  literals between them (RFC 3501 §4.3, §7.5; RFC 7888 ``{n+}``; RFC 3516 ``~{n}``),
  announces synchronizing literals as :class:`ContinuationNeeded` so the server can
  write ``+``, enforces every size limit, and resynchronises after an error. Framing
  never depends on the grammar, so a syntax error can never desynchronise the stream:
  a command is consumed whole before it is judged.
* **Grammar** (``_Reader`` and the ``_cmd_*`` functions): a recursive-descent reading
  of one complete command into the dataclasses of :mod:`gateway.imap.command`.

The server drives it in the h11 style: ``receive_data(bytes)``, then ``next_event()``
until it returns ``NEED_DATA``. Parsing is lazy (one event per call), so a server can
switch the parser to raw-line mode (IDLE's ``DONE``, AUTHENTICATE responses) or turn
on ``utf8_accept`` between two pipelined commands. Nothing ever raises out of the
public methods: any problem, including a bug here, becomes a :class:`ParseError`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import NoReturn, TypeVar

import structlog

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    Seq,
    SeqRange,
    SequenceSet,
    Size,
    Text,
    Uid,
)
from gateway.imap.command import (
    NEED_DATA,
    Append,
    AppendMessage,
    Authenticate,
    BodySection,
    Command,
    ContinuationNeeded,
    Copy,
    Create,
    Enable,
    Event,
    Fetch,
    FetchAttr,
    FetchItem,
    Id,
    List,
    Login,
    MailboxCommand,
    ParseError,
    QResync,
    RawLine,
    Rename,
    Search,
    Select,
    SetQuota,
    Simple,
    Status,
    Store,
    UidExpunge,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# ---- limits ---------------------------------------------------------------------------

MAX_LINE_LENGTH = 65536
"""Longest line (the text between two literals or CRLFs). Going over it is fatal: without
a line end in sight the stream cannot be resynchronised."""

MAX_LITERAL_SIZE = 64 * 1024 * 1024
"""Largest single literal. Over it: ``NO [TOOBIG]`` for ``{n}`` (the client never sends
the bytes), fatal for ``{n+}`` (the bytes are already on their way)."""

MAX_COMMAND_SIZE = 2 * MAX_LITERAL_SIZE
"""Largest whole command, lines plus literals (a MULTIAPPEND carries several messages)."""

MAX_LITERALS = 10_000
"""Most literals in one command; bounds the bookkeeping objects a command can create."""

MAX_NESTING = 32
"""Deepest parenthesis nesting (search key groups, lists)."""

MAX_SEARCH_DEPTH = 100
"""Deepest search-key recursion counting NOT, OR and groups; long ``OR OR OR ...`` chains
are legitimate up to this depth, and the bound keeps the criteria tree's recursive
evaluators safe as well as this parser."""

MAX_SEQUENCE_RANGES = 10_000
"""Most comma-separated elements in one sequence set."""

NUMBER_MAX = 2**32 - 1  # RFC 3501 §9 number
NUMBER64_MAX = 2**63 - 1  # RFC 7162 mod-sequence-value, RFC 9051 number64

SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
"""SEARCH charsets; strings are decoded as UTF-8, of which US-ASCII is a subset."""

# ---- lexical classes (RFC 3501 §9) ----------------------------------------------------

# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM_CHARS = rb"\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e"
_ATOM_RE = re.compile(rb"[" + _ATOM_CHARS + rb"]+")
_ASTRING_RE = re.compile(rb"[" + _ATOM_CHARS + rb"\x5d]+")  # ASTRING-CHAR adds "]"
_LIST_MAILBOX_RE = re.compile(rb"[" + _ATOM_CHARS + rb"\x25\x2a\x5d]+")  # list-char
_TAG_RE = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d\x5e-\x7a\x7c-\x7e]+")  # no "+"
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
_BASE64_RE = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")
_FETCH_NAME_RE = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_PART_RE = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_SECTION_KIND_RE = re.compile(rb"[A-Za-z.]+")
_FIELD_NAME_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
_SEARCH_DATE_RE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME_RE = re.compile(
    rb'"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
_LITERAL_MARKER_RE = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")

_DQ, _LPAREN, _RPAREN, _SP, _LBRACKET = 0x22, 0x28, 0x29, 0x20, 0x5B

_MONTHS = {
    m.encode(): i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
"""RFC 3501 §2.3.2 system flags, in their canonical spelling."""
_SYSTEM_FLAGS = {f.lower(): f for f in SYSTEM_FLAGS}

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
"""RFC 6154 §2 special-use attributes, in their canonical spelling."""
_SPECIAL_USES = {f.lower(): f for f in SPECIAL_USES}

# ---- command-word tables ---------------------------------------------------------------

_SIMPLE_COMMANDS = frozenset(
    "CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE NAMESPACE IDLE".split()
)
_MAILBOX_COMMANDS = frozenset("DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT GETQUOTA".split())

FETCH_ATTRS = frozenset(
    "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE UID RFC822 RFC822.HEADER "
    "RFC822.TEXT MODSEQ".split()
)
"""RFC 3501 §6.4.5 plain fetch attributes, plus RFC 7162 MODSEQ."""

_FAST = ("FLAGS", "INTERNALDATE", "RFC822.SIZE")
FETCH_MACROS = {
    "FAST": _FAST,
    "ALL": (*_FAST, "ENVELOPE"),
    "FULL": (*_FAST, "ENVELOPE", "BODY"),
}
"""RFC 3501 §6.4.5 macros and the attributes they stand for."""

_SECTION_KINDS = frozenset(("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"))

STATUS_ITEMS = frozenset("MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE".split())
"""RFC 3501 §6.3.10, RFC 7162 §3.1.8 (HIGHESTMODSEQ), RFC 8438 (SIZE)."""

LIST_SELECTION_OPTIONS = frozenset(("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"))
"""RFC 5258 §3.1 and RFC 6154 §5.1 LIST selection options."""

LIST_RETURN_OPTIONS = frozenset(("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"))
"""RFC 5258 §3.2 and RFC 6154 §5.1 LIST return options; STATUS (RFC 5819) is separate."""

SEARCH_RETURN_OPTIONS = frozenset(("MIN", "MAX", "ALL", "COUNT"))
"""RFC 4731 §3.1 ESEARCH result options."""

_STORE_ACTIONS = {
    f"{mode}FLAGS{silent}": (mode, bool(silent))
    for mode in ("", "+", "-")
    for silent in ("", ".SILENT")
}

_SEARCH_SIMPLE: dict[str, Criteria] = {
    "ALL": All(),
    "ANSWERED": Flag("\\Answered"),
    "DELETED": Flag("\\Deleted"),
    "DRAFT": Flag("\\Draft"),
    "FLAGGED": Flag("\\Flagged"),
    "RECENT": Flag("\\Recent"),
    "SEEN": Flag("\\Seen"),
    "UNANSWERED": Flag("\\Answered", False),
    "UNDELETED": Flag("\\Deleted", False),
    "UNDRAFT": Flag("\\Draft", False),
    "UNFLAGGED": Flag("\\Flagged", False),
    "UNSEEN": Flag("\\Seen", False),
    "NEW": And((Flag("\\Recent"), Flag("\\Seen", False))),
    "OLD": Not(Flag("\\Recent")),
}
_SEARCH_HEADERS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_SEARCH_TEXT = frozenset(("BODY", "TEXT"))
_SEARCH_DATES = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}
_SEARCH_SIZES = {"LARGER": "larger", "SMALLER": "smaller"}


def _show(text: bytes, limit: int = 32) -> str:
    """A short, printable rendering of client text for an error message."""
    shown = text[:limit].decode("ascii", "backslashreplace")
    return shown + "..." if len(text) > limit else shown


# ---- grammar ---------------------------------------------------------------------------


class _Syntax(Exception):
    """The command does not follow the grammar (or breaks a grammar-level limit)."""

    def __init__(self, message: str, code: str | None = None, status: str = "BAD") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class _Incomplete(Exception):
    """The grammar reached a literal whose bytes have not arrived (prefix check only)."""


class _Literal:
    """A literal within a command: ``data`` is None until its bytes have arrived."""

    __slots__ = ("binary", "data")

    def __init__(self, data: bytes | None, binary: bool) -> None:
        self.data = data
        self.binary = binary


class _Reader:
    """A cursor over one command, as text segments separated by literals.

    ``segs[i]`` is the text before literal ``lits[i]`` (the literal marker itself is
    stripped); ``lits[-1]`` is None for a complete command. Every method either
    consumes what it reads or raises ``_Syntax``; there is no backtracking, because
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
        "pos",
        "search_depth",
        "text",
        "utf8",
    )

    def __init__(
        self,
        segs: list[bytes],
        lits: list[_Literal | None],
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
        self.search_depth = 0
        self.max_nesting = max_nesting
        self.max_search_depth = max_search_depth
        self.max_ranges = max_ranges
        self.utf8 = utf8
        self.cmd = ""  # the command words, for error messages ("UID FETCH")

    # -- positions --

    def fail(self, what: str) -> NoReturn:
        raise _Syntax(f"expected {what}")

    def peek(self) -> int:
        """The next byte of the current line, or -1 at its end (a literal or the end)."""
        return self.text[self.pos] if self.pos < self.end else -1

    def at_end(self) -> bool:
        return self.pos >= self.end and self._lits[self._i] is None

    def at_literal(self) -> bool:
        return self.pos >= self.end and self._lits[self._i] is not None

    def finish(self) -> None:
        """RFC 3501 §2.2.1: a command ends with CRLF, nothing may follow its arguments."""
        if not self.at_end():
            self.fail("the end of the command")

    def sp(self, what: str) -> None:
        """One space, then ``what`` (named in the error if either is missing)."""
        if self.pos < self.end and self.text[self.pos] == _SP:
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
            raise _Syntax(f"parentheses nested deeper than {self.max_nesting}", code="LIMIT")

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
            raise _Syntax(f"{what} out of range ({minimum} to {maximum})")
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
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Syntax("a quoted string that is not valid UTF-8") from None
        if b"\\" in raw:
            raw = _UNESCAPE_RE.sub(rb"\1", raw)
        return raw

    def _quoted_problem(self) -> NoReturn:
        """Explain why a quoted string did not parse."""
        if self.peek() != _DQ:
            self.fail("a quoted string")
        stop = _QUOTED_PREFIX_UTF8_RE.match(self.text, self.pos + 1).end()
        if stop >= self.end:
            raise _Syntax("quoted string has no closing quote")
        bad = self.text[stop]
        if bad == 0x5C:
            raise _Syntax('only \\\\ and \\" may be escaped in a quoted string')
        raise _Syntax("control character in a quoted string")

    def literal(self, binary_ok: bool = False) -> bytes:
        lit = self._lits[self._i]
        if lit is None or self.pos < self.end:
            self.fail("a literal")
        if lit.data is None:
            raise _Incomplete
        if lit.binary and not binary_ok:
            raise _Syntax("literal8 (~{n}) is only allowed for APPEND message data")
        self._i += 1
        self.text = self._segs[self._i]
        self.pos = 0
        self.end = len(self.text)
        return lit.data

    def string(self, what: str) -> bytes:
        """RFC 3501 string = quoted / literal."""
        if self.peek() == _DQ:
            return self.quoted()
        if self.at_literal():
            return self.literal()
        self.fail(what)

    def astring(self, what: str) -> bytes:
        """RFC 3501 astring = 1*ASTRING-CHAR / string."""
        pos = self.pos
        if pos < self.end:
            if self.text[pos] == _DQ:
                return self.quoted()
            m = _ASTRING_RE.match(self.text, pos)
            if m is None:
                self.fail(what)
            self.pos = m.end()
            return m.group()
        if self._lits[self._i] is not None:
            return self.literal()
        self.fail(what)

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
        return self.string("a mailbox pattern")

    def utf8_text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Syntax(f"{what} is not valid UTF-8") from None

    def seqset(self, what: str = "a sequence set") -> SequenceSet:
        """RFC 3501 sequence-set; ``*`` becomes None, 0 is refused."""
        m = _SEQSET_TOKEN_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        token = m.group()
        if token.count(b",") >= self.max_ranges:
            raise _Syntax(f"sequence set has more than {self.max_ranges} elements", code="LIMIT")
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
            raise _Syntax("sequence numbers and UIDs start at 1, 0 is not valid")
        if value > NUMBER_MAX:
            raise _Syntax(f"sequence number {_show(digits)} is larger than {NUMBER_MAX}")
        return value

    def flag(self, what: str = "a flag") -> str:
        """RFC 3501 flag: system flags get their canonical case, keywords stay as sent."""
        m = _FLAG_RE.match(self.text, self.pos)
        if m is None:
            self.fail(what)
        self.pos = m.end()
        flag = m.group().decode("ascii")
        if flag[0] == "\\":
            return _SYSTEM_FLAGS.get(flag.lower(), flag)
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
            raise _Syntax(f"invalid date-time {_show(m.group())}")
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
            raise _Syntax(f"invalid date-time {_show(m.group())}") from None
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
            raise _Syntax(f"invalid date {_show(m.group())}") from None

    # -- the command line --

    def command(self) -> tuple[str, Command]:
        """tag SP command-word ..., dispatched to the grammar of that command."""
        m = _TAG_RE.match(self.text, 0)
        if m is None:
            raise _Syntax("expected a command tag")
        tag = m.group().decode("ascii")
        self.pos = m.end()
        self.sp("a command name")
        name = self.atom("a command name").decode("ascii").upper()
        uid = False
        if name == "UID":
            self.cmd = "UID"
            self.sp("FETCH, STORE, SEARCH, COPY, MOVE or EXPUNGE after UID")
            name = self.atom("a command name after UID").decode("ascii").upper()
            grammar = _UID_COMMANDS.get(name)
            if grammar is None:
                raise _Syntax(f"{_show(name.encode())} is not a UID command")
            uid = True
            self.cmd = f"UID {name}"
        else:
            grammar = _COMMANDS.get(name)
            if grammar is None:
                raise _Syntax(f"unknown command {_show(name.encode())}")
            self.cmd = name
        return tag, grammar(self, tag, name, uid)


# ---- one function per command (RFC 3501 §6 and the extensions) ------------------------


def _cmd_simple(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE NAMESPACE IDLE: no
    arguments (RFC 3501 §6.1, §6.4; RFC 3691; RFC 2342; RFC 2177)."""
    r.finish()
    return Simple(tag=tag, name=name)


def _cmd_login(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """LOGIN userid password, RFC 3501 §6.2.3."""
    r.sp("a user name")
    user = r.astring("a user name")
    r.sp("a password")
    password = r.astring("a password")
    r.finish()
    return Login(tag=tag, name=name, user=user, password=password)


def _cmd_authenticate(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """AUTHENTICATE mechanism [initial-response], RFC 3501 §6.2.2 and RFC 4959."""
    r.sp("a SASL mechanism name")
    mechanism = r.word("a SASL mechanism name")
    initial = None
    if not r.at_end():
        r.sp("a base64 initial response")
        m = _BASE64_RE.match(r.text, r.pos)
        if m is None:
            r.fail('a base64 initial response (or "=" for an empty one)')
        r.pos = m.end()
        initial = m.group()
    r.finish()
    return Authenticate(tag=tag, name=name, mechanism=mechanism, initial_response=initial)


def _cmd_select(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """SELECT / EXAMINE mailbox [(CONDSTORE) / (QRESYNC (...))], RFC 3501 §6.3.1,
    RFC 7162 §3.1.8 and §3.2.5."""
    r.sp("a mailbox name")
    mailbox = r.astring("a mailbox name")
    condstore = False
    qresync = None
    if not r.at_end():
        r.sp("select parameters")
        r.open("a parenthesised list of select parameters")
        while True:
            param = r.word("a select parameter")
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp("QRESYNC parameters")
                qresync = _qresync(r)
            else:
                raise _Syntax(f"unknown select parameter {_show(param.encode())}")
            if r.take_close():
                break
            r.sp("a select parameter")
    r.finish()
    return Select(tag=tag, name=name, mailbox=mailbox, condstore=condstore, qresync=qresync)


def _qresync(r: _Reader) -> QResync:
    """``(uidvalidity modseq [known-uids] [(seq-match-seqs seq-match-uids)])``, RFC 7162 §3.2.5."""
    r.open("a parenthesised list of QRESYNC parameters")
    uidvalidity = r.nz_number("a UIDVALIDITY")
    r.sp("a mod-sequence")
    modseq = r.modseq("a mod-sequence", zero_ok=False)
    known = None
    match = None
    if not r.take_close():
        r.sp("known UIDs")
        if r.peek() != _LPAREN:
            known = r.seqset("known UIDs")
            if not r.take_close():
                r.sp("sequence match data")
                match = _seq_match(r)
                r.close()
        else:
            match = _seq_match(r)
            r.close()
    return QResync(uidvalidity=uidvalidity, modseq=modseq, known_uids=known, seq_match=match)


def _seq_match(r: _Reader) -> tuple[SequenceSet, SequenceSet]:
    r.open("sequence match data")
    seqs = r.seqset("known sequence numbers")
    r.sp("known UIDs")
    uids = r.seqset("known UIDs")
    r.close()
    return seqs, uids


def _cmd_create(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """CREATE mailbox [(USE (attrs))], RFC 3501 §6.3.3 and RFC 6154 §3."""
    r.sp("a mailbox name")
    mailbox = r.astring("a mailbox name")
    uses: tuple[str, ...] = ()
    if not r.at_end():
        r.sp("create parameters")
        r.open("a parenthesised list of create parameters")
        while True:
            param = r.word("a create parameter")
            if param != "USE":
                raise _Syntax(f"unknown create parameter {_show(param.encode())}")
            r.sp("special-use attributes")
            uses += tuple(
                r.paren_list(lambda: _use_attr(r), "special-use attributes", empty_ok=True)
            )
            if r.take_close():
                break
            r.sp("a create parameter")
    r.finish()
    return Create(tag=tag, name=name, mailbox=mailbox, special_use=uses)


def _use_attr(r: _Reader) -> str:
    attr = r.flag("a special-use attribute")
    if not attr.startswith("\\"):
        r.fail("a special-use attribute such as \\Sent")
    return _SPECIAL_USES.get(attr.lower(), attr)


def _cmd_mailbox(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """One mailbox (or quota root) argument: DELETE SUBSCRIBE UNSUBSCRIBE (RFC 3501
    §6.3.4, §6.3.6-7), GETQUOTA and GETQUOTAROOT (RFC 9208 §4.2-3)."""
    what = "a quota root" if name == "GETQUOTA" else "a mailbox name"
    r.sp(what)
    mailbox = r.astring(what)
    r.finish()
    return MailboxCommand(tag=tag, name=name, mailbox=mailbox)


def _cmd_rename(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """RENAME existing new, RFC 3501 §6.3.5."""
    r.sp("the existing mailbox name")
    old = r.astring("the existing mailbox name")
    r.sp("the new mailbox name")
    new = r.astring("the new mailbox name")
    r.finish()
    return Rename(tag=tag, name=name, old=old, new=new)


def _cmd_list(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """LIST / LSUB, RFC 3501 §6.3.8-9, with RFC 5258 LIST-EXTENDED (selection options,
    several patterns, RETURN options), RFC 6154 SPECIAL-USE and RFC 5819 RETURN STATUS."""
    extended = name == "LIST"
    is_extended = False
    selection: tuple[str, ...] = ()
    r.sp("a reference name")
    if extended and r.peek() == _LPAREN:
        is_extended = True
        selection = tuple(
            r.paren_list(lambda: r.word("a selection option"), "selection options", empty_ok=True)
        )
        for option in selection:
            if option not in LIST_SELECTION_OPTIONS:
                raise _Syntax(f"unknown selection option {_show(option.encode())}")
        if "RECURSIVEMATCH" in selection and not {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
            raise _Syntax("RECURSIVEMATCH needs another selection option (RFC 5258 §3)")
        r.sp("a reference name")
    reference = r.astring("a reference name")
    r.sp("a mailbox pattern")
    if extended and r.peek() == _LPAREN:
        is_extended = True
        patterns = tuple(r.paren_list(r.list_mailbox, "mailbox patterns"))
    else:
        patterns = (r.list_mailbox(),)
    returns: list[str] = []
    status_items: list[str] = []
    if extended and not r.at_end():
        r.sp("RETURN")
        if r.word("RETURN") != "RETURN":
            r.fail("RETURN options")
        is_extended = True
        r.sp("return options")

        def option() -> None:
            word = r.word("a return option")
            if word == "STATUS":
                r.sp("status items")
                status_items.extend(r.paren_list(lambda: _status_item(r), "status items"))
            elif word in LIST_RETURN_OPTIONS:
                returns.append(word)
            else:
                raise _Syntax(f"unknown return option {_show(word.encode())}")

        r.paren_list(option, "return options", empty_ok=True)
    r.finish()
    return List(
        tag=tag,
        name=name,
        reference=reference,
        patterns=patterns,
        selection=selection,
        returns=tuple(returns),
        status_items=tuple(status_items),
        extended=is_extended,
    )


def _status_item(r: _Reader) -> str:
    item = r.word("a status item")
    if item not in STATUS_ITEMS:
        raise _Syntax(f"unknown status item {_show(item.encode())}")
    return item


def _cmd_status(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """STATUS mailbox (items), RFC 3501 §6.3.10."""
    r.sp("a mailbox name")
    mailbox = r.astring("a mailbox name")
    r.sp("status items")
    items = tuple(r.paren_list(lambda: _status_item(r), "status items"))
    r.finish()
    return Status(tag=tag, name=name, mailbox=mailbox, items=items)


def _cmd_append(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """APPEND mailbox [flags] [date-time] literal, repeated for MULTIAPPEND (RFC 3501
    §6.3.11, RFC 3502 §6); the data may be a literal8 (RFC 3516 §4.4)."""
    r.sp("a mailbox name")
    mailbox = r.astring("a mailbox name")
    messages = []
    while True:
        r.sp("a message literal")
        flags: tuple[str, ...] = ()
        date = None
        if r.peek() == _LPAREN:
            flags = tuple(r.paren_list(r.flag, "flags", empty_ok=True))
            r.sp("a message literal")
        if r.peek() == _DQ:
            date = r.date_time()
            r.sp("a message literal")
        if not r.at_literal():
            r.fail("a message literal")
        data = r.literal(binary_ok=True)
        messages.append(AppendMessage(flags=flags, date=date, data=data))
        if r.at_end():
            break
    return Append(tag=tag, name=name, mailbox=mailbox, messages=tuple(messages))


def _cmd_fetch(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """FETCH sequence-set items [(modifiers)], RFC 3501 §6.4.5, RFC 7162 §3.1.4 and §3.2.6."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("fetch items")
    items: list[FetchItem] = []
    if r.peek() == _LPAREN:
        r.paren_list(lambda: _fetch_att(r, items, macro_ok=False), "fetch items")
    else:
        _fetch_att(r, items, macro_ok=True)
    changedsince = None
    vanished = False
    if not r.at_end():
        r.sp("fetch modifiers")

        def modifier() -> None:
            nonlocal changedsince, vanished
            word = r.word("a fetch modifier")
            if word == "CHANGEDSINCE":
                r.sp("a mod-sequence")
                changedsince = r.modseq("a mod-sequence", zero_ok=True)
            elif word == "VANISHED":
                vanished = True
            else:
                raise _Syntax(f"unknown fetch modifier {_show(word.encode())}")

        r.paren_list(modifier, "fetch modifiers")
        if vanished and not uid:
            raise _Syntax("VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)")
        if vanished and changedsince is None:
            raise _Syntax("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")
    r.finish()
    return Fetch(
        tag=tag,
        name=name,
        uid=uid,
        sequence_set=seqs,
        items=tuple(items),
        changedsince=changedsince,
        vanished=vanished,
    )


def _fetch_att(r: _Reader, out: list[FetchItem], macro_ok: bool) -> None:
    m = _FETCH_NAME_RE.match(r.text, r.pos)
    if m is None:
        r.fail("a fetch attribute")
    r.pos = m.end()
    word = m.group().decode("ascii").upper()
    if r.peek() == _LBRACKET:
        if word not in ("BODY", "BODY.PEEK"):
            raise _Syntax(f"unknown fetch attribute {_show(m.group())}[")
        out.append(_body_section(r, peek=word == "BODY.PEEK"))
    elif word in FETCH_ATTRS:
        out.append(FetchAttr(word))
    elif word == "BODY.PEEK":
        raise _Syntax("BODY.PEEK needs a section, as in BODY.PEEK[]")
    elif word in FETCH_MACROS:
        if not macro_ok:
            raise _Syntax(f"the macro {word} cannot be used inside a list")
        out.extend(FetchAttr(a) for a in FETCH_MACROS[word])
    else:
        raise _Syntax(f"unknown fetch attribute {_show(m.group())}")


def _body_section(r: _Reader, peek: bool) -> BodySection:
    """``[section]<origin.count>``, RFC 3501 §6.4.5 and the section grammar of §9."""
    r.expect(b"[", '"["')
    part: tuple[int, ...] = ()
    kind = ""
    fields: tuple[str, ...] = ()
    m = _SECTION_PART_RE.match(r.text, r.pos)
    if m is not None:
        numbers = m.group().split(b".")
        if any(len(n) > 10 or int(n) == 0 or int(n) > NUMBER_MAX for n in numbers):
            raise _Syntax("section part numbers are from 1 to 4294967295")
        part = tuple(int(n) for n in numbers)
        r.pos = m.end()
        if r.take(b"."):
            kind = _section_kind(r)
    elif r.peek() != 0x5D:
        kind = _section_kind(r)
        if kind == "MIME":
            raise _Syntax("MIME needs a part number, as in BODY[1.MIME]")
    if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        r.sp("a list of header field names")
        fields = tuple(r.paren_list(lambda: _header_field(r), "header field names"))
    r.expect(b"]", '"]" to end the section')
    partial = None
    if r.take(b"<"):
        origin = r.number("a partial origin")
        r.expect(b".", '"." and an octet count')
        count = r.nz_number("a partial octet count")
        r.expect(b">", '">" to end the partial range')
        partial = (origin, count)
    return BodySection(peek=peek, part=part, kind=kind, fields=fields, partial=partial)


def _section_kind(r: _Reader) -> str:
    m = _SECTION_KIND_RE.match(r.text, r.pos)
    if m is None:
        r.fail("HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME")
    kind = m.group().decode("ascii").upper()
    if kind not in _SECTION_KINDS:
        raise _Syntax(f"unknown section {_show(m.group())}")
    r.pos = m.end()
    return kind


def _header_field(r: _Reader) -> str:
    raw = r.astring("a header field name")
    if _FIELD_NAME_RE.fullmatch(raw) is None:
        raise _Syntax(f"invalid header field name {_show(raw)}")
    return raw.decode("ascii").upper()


def _cmd_store(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """STORE sequence-set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] flags, RFC 3501 §6.4.6
    and RFC 7162 §3.1.3."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("FLAGS, +FLAGS or -FLAGS")
    unchangedsince = None
    if r.peek() == _LPAREN:
        r.open("store modifiers")
        if r.word("UNCHANGEDSINCE") != "UNCHANGEDSINCE":
            r.fail("the UNCHANGEDSINCE modifier")
        r.sp("a mod-sequence")
        unchangedsince = r.modseq("a mod-sequence", zero_ok=True)
        r.close()
        r.sp("FLAGS, +FLAGS or -FLAGS")
    action = _STORE_ACTIONS.get(r.word("FLAGS, +FLAGS or -FLAGS"))
    if action is None:
        r.fail("FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
    mode, silent = action
    r.sp("flags")
    if r.peek() == _LPAREN:
        flags = r.paren_list(r.flag, "flags", empty_ok=True)
    else:
        flags = [r.flag("flags")]
        while not r.at_end():
            r.sp("a flag")
            flags.append(r.flag())
    r.finish()
    return Store(
        tag=tag,
        name=name,
        uid=uid,
        sequence_set=seqs,
        mode=mode,
        silent=silent,
        flags=tuple(flags),
        unchangedsince=unchangedsince,
    )


def _cmd_copy(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """COPY / MOVE sequence-set mailbox, RFC 3501 §6.4.7 and RFC 6851 §3."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.sp("a mailbox name")
    mailbox = r.astring("a mailbox name")
    r.finish()
    return Copy(tag=tag, name=name, uid=uid, sequence_set=seqs, mailbox=mailbox)


def _cmd_expunge(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """UID EXPUNGE sequence-set, RFC 4315 §2.1."""
    r.sp("a sequence set")
    seqs = r.seqset()
    r.finish()
    return UidExpunge(tag=tag, name=name, uid=True, sequence_set=seqs)


def _cmd_search(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """SEARCH [RETURN (opts)] [CHARSET x] keys, RFC 3501 §6.4.4 and RFC 4731 §3."""
    r.sp("search criteria")
    returns = None
    charset = None
    if r.peek_word() == "RETURN":
        r.pos += 6
        r.sp("search return options")
        returns = tuple(r.paren_list(lambda: _search_return(r), "return options", empty_ok=True))
        # RFC 4731 §3.1: an empty list asks for an ESEARCH response and means (ALL).
        returns = returns or ("ALL",)
        r.sp("search criteria")
    if r.peek_word() == "CHARSET":
        r.pos += 7
        r.sp("a charset name")
        charset = r.astring("a charset name").decode("ascii", "replace").upper()
        if charset not in SUPPORTED_CHARSETS:
            raise _Syntax(
                "charset not supported",
                code=f"BADCHARSET ({' '.join(SUPPORTED_CHARSETS)})",
                status="NO",
            )
        r.sp("search criteria")
    keys = [_search_key(r)]
    while not r.at_end():
        r.sp("a search key")
        keys.append(_search_key(r))
    criteria = keys[0] if len(keys) == 1 else And(tuple(keys))
    return Search(tag=tag, name=name, uid=uid, charset=charset, criteria=criteria, returns=returns)


def _search_return(r: _Reader) -> str:
    option = r.word("a search return option")
    if option not in SEARCH_RETURN_OPTIONS:
        raise _Syntax(f"unknown search return option {_show(option.encode())}")
    return option


def _search_key(r: _Reader) -> Criteria:
    """One RFC 3501 §6.4.4 search key (plus RFC 7162 §3.1.5 MODSEQ)."""
    r.search_depth += 1
    if r.search_depth > r.max_search_depth:
        raise _Syntax(f"search keys nested deeper than {r.max_search_depth}", code="LIMIT")
    c = r.peek()
    if c == _LPAREN:
        r.open("a search key")
        keys = [_search_key(r)]
        while not r.take_close():
            r.sp("a search key")
            keys.append(_search_key(r))
        key = keys[0] if len(keys) == 1 else And(tuple(keys))
    elif 0x30 <= c <= 0x39 or c == 0x2A:
        key = Seq(r.seqset())
    else:
        word = r.word("a search key")
        key = _search_word(r, word)
    r.search_depth -= 1
    return key


def _search_word(r: _Reader, word: str) -> Criteria:
    simple = _SEARCH_SIMPLE.get(word)
    if simple is not None:
        return simple
    if word in _SEARCH_HEADERS:
        r.sp(f"a string after {word}")
        return Header(_SEARCH_HEADERS[word], _search_string(r))
    if word in _SEARCH_TEXT:
        r.sp(f"a string after {word}")
        return Text(word, _search_string(r))
    if word in _SEARCH_DATES:
        field, op = _SEARCH_DATES[word]
        r.sp(f"a date after {word}")
        return Date(field, op, r.search_date())
    if word in _SEARCH_SIZES:
        r.sp(f"a size after {word}")
        return Size(_SEARCH_SIZES[word], r.number("a size", NUMBER64_MAX))
    if word == "HEADER":
        r.sp("a header field name")
        field = _search_string(r, "header field name").lower()
        r.sp("a string after the header field name")
        return Header(field, _search_string(r))
    if word in ("KEYWORD", "UNKEYWORD"):
        r.sp(f"a keyword after {word}")
        return Flag(r.flag("a keyword"), word == "KEYWORD")
    if word == "NOT":
        r.sp("a search key after NOT")
        return Not(_search_key(r))
    if word == "OR":
        r.sp("two search keys after OR")
        left = _search_key(r)
        r.sp("a second search key after OR")
        return Or(left, _search_key(r))
    if word == "UID":
        r.sp("a sequence set after UID")
        return Uid(r.seqset())
    if word == "MODSEQ":
        r.sp("a mod-sequence after MODSEQ")
        if r.peek() == _DQ:  # RFC 7162 search-modseq-ext: entry name and type, ignored
            entry = r.quoted()
            if not entry.lower().startswith(b"/flags/"):
                r.fail('an entry name like "/flags/\\\\Seen"')
            r.sp("an entry type")
            if r.word("an entry type") not in ("PRIV", "SHARED", "ALL"):
                r.fail("an entry type (priv, shared or all)")
            r.sp("a mod-sequence")
        return ModSeq(r.modseq("a mod-sequence", zero_ok=True))
    raise _Syntax(f"unknown search key {_show(word.encode())}")


def _search_string(r: _Reader, what: str = "search string") -> str:
    return r.utf8_text(r.astring(f"a {what}"), what)


def _cmd_enable(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """ENABLE capability..., RFC 5161 §3.1."""
    caps = []
    while True:
        r.sp("a capability name")
        caps.append(r.word("a capability name"))
        if r.at_end():
            break
    return Enable(tag=tag, name=name, capabilities=tuple(caps))


def _cmd_id(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """ID NIL / ID ("field" "value" ...), RFC 2971 §3.1."""
    r.sp("NIL or a list of ID parameters")
    if r.peek() != _LPAREN:
        if r.word("NIL or a list of ID parameters") != "NIL":
            r.fail("NIL or a list of ID parameters")
        r.finish()
        return Id(tag=tag, name=name, params=None)
    params: list[tuple[str, str | None]] = []
    r.open("a list of ID parameters")
    if not r.take_close():
        while True:
            key = r.string("an ID field name").decode("utf-8", "replace")
            r.sp("an ID field value")
            value = r.nstring("an ID field value")
            params.append((key, None if value is None else value.decode("utf-8", "replace")))
            if r.take_close():
                break
            r.sp("an ID field name")
    r.finish()
    return Id(tag=tag, name=name, params=tuple(params))


def _cmd_setquota(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    """SETQUOTA root (resource limit ...), RFC 9208 §4.1."""
    r.sp("a quota root")
    root = r.astring("a quota root")
    r.sp("a list of resource limits")

    def resource() -> tuple[str, int]:
        res = r.word("a resource name")
        r.sp("a limit")
        return res, r.number("a limit", NUMBER64_MAX)

    limits = tuple(r.paren_list(resource, "resource limits", empty_ok=True))
    r.finish()
    return SetQuota(tag=tag, name=name, root=root, limits=limits)


_Grammar = Callable[[_Reader, str, str, bool], Command]
_COMMANDS: dict[str, _Grammar] = {
    **{n: _cmd_simple for n in _SIMPLE_COMMANDS},
    **{n: _cmd_mailbox for n in _MAILBOX_COMMANDS},
    "LOGIN": _cmd_login,
    "AUTHENTICATE": _cmd_authenticate,
    "SELECT": _cmd_select,
    "EXAMINE": _cmd_select,
    "CREATE": _cmd_create,
    "RENAME": _cmd_rename,
    "LIST": _cmd_list,
    "LSUB": _cmd_list,
    "STATUS": _cmd_status,
    "APPEND": _cmd_append,
    "FETCH": _cmd_fetch,
    "STORE": _cmd_store,
    "COPY": _cmd_copy,
    "MOVE": _cmd_copy,
    "SEARCH": _cmd_search,
    "ENABLE": _cmd_enable,
    "ID": _cmd_id,
    "SETQUOTA": _cmd_setquota,
}
_UID_COMMANDS: dict[str, _Grammar] = {
    "FETCH": _cmd_fetch,
    "STORE": _cmd_store,
    "SEARCH": _cmd_search,
    "COPY": _cmd_copy,
    "MOVE": _cmd_copy,
    "EXPUNGE": _cmd_expunge,
}

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
    ) -> None:
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_command_size = max_command_size
        self.max_literals = max_literals
        self.max_nesting = max_nesting
        self.max_search_depth = max_search_depth
        self.max_sequence_ranges = max_sequence_ranges
        self.utf8_accept = False
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

    @property
    def buffered_size(self) -> int:
        """Bytes held right now: unparsed input plus the command collected so far.

        Once ``next_event`` has returned ``NEED_DATA`` this is at most
        ``max_line_length + 2`` plus ``max_command_size``.
        """
        return len(self._buf) + self._collected

    @property
    def failed(self) -> bool:
        """True once a fatal error was reported; the connection should be closed."""
        return self._state is _FAILED

    # -- framing --

    def _reset(self) -> None:
        """Forget the current command (done, refused or skipped) and expect a new one."""
        self._state = _START
        self._segs: list[bytes] = []
        self._lits: list[_Literal | None] = []
        self._nlits = 0
        self._size = 0
        self._collected = 0
        self._tag: str | None = None
        self._checked = False
        self._lit_parts: list[bytes] = []
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
            if state is _START:
                if self._raw:
                    self._raw = False
                    return RawLine(line)
                if not line:
                    continue  # a stray CRLF between commands carries nothing
                m = _TAG_RE.match(line)
                if m is not None and (m.end() == len(line) or line[m.end()] == _SP):
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
            if keep:
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
        self._size += size
        self._nlits += 1
        self._collected += start
        self._segs.append(line[:start])
        self._lits.append(_Literal(None, binary))
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
        reader = _Reader(
            self._segs,
            self._lits,
            max_nesting=self.max_nesting,
            max_search_depth=self.max_search_depth,
            max_ranges=self.max_sequence_ranges,
            utf8=self.utf8_accept,
        )
        try:
            _tag, command = reader.command()
        except _Incomplete:
            return None
        except _Syntax as e:
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
