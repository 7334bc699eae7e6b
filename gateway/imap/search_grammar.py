"""The SEARCH grammar, RFC 3501 §6.4.4 with RFC 4731 (ESEARCH), RFC 7162 §3.1.5 (MODSEQ),
RFC 5182 (SEARCHRES: ``RETURN (SAVE)`` and ``$``), RFC 5032 (WITHIN: OLDER/YOUNGER),
RFC 8514 (SAVEDATE keys) and RFC 8474 §6 (EMAILID/THREADID keys).

Reads ``SEARCH [RETURN (...)] [CHARSET x] keys`` into a :mod:`gateway.core.criteria`
tree. The depth of that tree is bounded by the reader's ``max_search_depth``, which is
the store's :data:`gateway.store.search.MAX_SEARCH_DEPTH` unless configured lower: the
parser refuses a program too deep for the store with ``BAD [LIMIT]`` (RFC 5530) before
anything runs, and its own recursion stays bounded too.
"""

from __future__ import annotations

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    EmailId,
    Flag,
    Header,
    ModSeq,
    Not,
    Or,
    Seq,
    Size,
    Text,
    ThreadId,
    Uid,
    Within,
)
from gateway.core.flags import ANSWERED, DELETED, DRAFT, FLAGGED, RECENT, SEEN
from gateway.imap.command import Command, Search
from gateway.imap.reader import DQ, LPAREN, NUMBER64_MAX, NUMBER_MAX, Reader, Syntax, show

SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
"""SEARCH charsets; strings are decoded as UTF-8, of which US-ASCII is a subset."""

SEARCH_RETURN_OPTIONS = frozenset(
    ("MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL")
)
"""RFC 4731 §3.1 ESEARCH result options, RFC 5182 §2.1 SAVE, and RFC 5267 §4 UPDATE,
CONTEXT (a hint, ignored) and PARTIAL."""


_SEARCH_SIMPLE: dict[str, Criteria] = {
    "ALL": All(),
    "ANSWERED": Flag(ANSWERED),
    "DELETED": Flag(DELETED),
    "DRAFT": Flag(DRAFT),
    "FLAGGED": Flag(FLAGGED),
    "RECENT": Flag(RECENT),
    "SEEN": Flag(SEEN),
    "UNANSWERED": Flag(ANSWERED, False),
    "UNDELETED": Flag(DELETED, False),
    "UNDRAFT": Flag(DRAFT, False),
    "UNFLAGGED": Flag(FLAGGED, False),
    "UNSEEN": Flag(SEEN, False),
    "NEW": And((Flag(RECENT), Flag(SEEN, False))),
    "OLD": Not(Flag(RECENT)),
    # RFC 8514 §4.2: every mailbox here records save dates, so this matches all.
    "SAVEDATESUPPORTED": All(),
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
    "SAVEDBEFORE": ("saved", "before"),  # RFC 8514 §4.2
    "SAVEDON": ("saved", "on"),
    "SAVEDSINCE": ("saved", "since"),
}
_SEARCH_WITHIN = {"OLDER": "older", "YOUNGER": "younger"}  # RFC 5032 §3
_SEARCH_SIZES = {"LARGER": "larger", "SMALLER": "smaller"}


def cmd_search(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """SEARCH [RETURN (opts)] [CHARSET x] keys, RFC 3501 §6.4.4 and RFC 4731 §3."""
    r.sp("search criteria")
    returns = None
    partial = None
    charset = None
    if r.peek_word() == "RETURN":
        r.pos += 6
        r.sp("search return options")
        options: list[str] = []
        for option, window in r.paren_list(
            lambda: return_option(r, SEARCH_RETURN_OPTIONS, "search"),
            "return options",
            empty_ok=True,
        ):
            options.append(option)
            if window is not None:
                partial = window
        # RFC 4731 §3.1: an empty list asks for an ESEARCH response and means (ALL).
        returns = check_returns(options)
        r.sp("search criteria")
    if r.peek_word() == "CHARSET":
        r.pos += 7
        r.sp("a charset name")
        charset = r.astring("a charset name").decode("ascii", "replace").upper()
        if charset not in SUPPORTED_CHARSETS:
            raise Syntax(
                "charset not supported",
                code=f"BADCHARSET ({' '.join(SUPPORTED_CHARSETS)})",
                status="NO",
            )
        r.sp("search criteria")
    criteria = search_program(r, charset)
    return Search(
        tag=tag,
        name=name,
        uid=uid,
        charset=charset,
        criteria=criteria,
        returns=returns,
        partial=partial,
    )


def search_program(r: Reader, charset: str | None) -> Criteria:
    """``search-key *(SP search-key)`` to the end of the command, as one tree (an implicit
    AND of several keys), its strings in ``charset``; SORT and THREAD (RFC 5256) end with
    the same program."""
    keys = [_search_key(r)]
    while not r.at_end():
        r.sp("a search key")
        keys.append(_search_key(r))
    if len(keys) > 1:
        _reach(r, r.search_peak + 1)  # every key sits one level down, in the implicit AND
    criteria = keys[0] if len(keys) == 1 else And(tuple(keys))
    if charset == "US-ASCII" and not _all_ascii(criteria):
        raise Syntax("a search string is not US-ASCII, the CHARSET named (use CHARSET UTF-8)")
    return criteria


def _all_ascii(criteria: Criteria) -> bool:
    """Whether every search string in the tree is US-ASCII.

    RFC 3501 §6.4.4: the strings are in the CHARSET named. Without CHARSET, 8-bit strings
    are taken as UTF-8 (as clients send them); with an explicit ``CHARSET US-ASCII`` an
    8-bit octet cannot be read, so the command is BAD rather than searched as UTF-8.
    """
    stack = [criteria]
    while stack:
        node = stack.pop()
        if isinstance(node, Header | Text) and not node.value.isascii():
            return False
        if isinstance(node, And):
            stack.extend(node.keys)
        elif isinstance(node, Or):
            stack.extend((node.left, node.right))
        elif isinstance(node, Not):
            stack.append(node.key)
    return True


def return_option(
    r: Reader, known: frozenset[str], what: str
) -> tuple[str, tuple[int, int] | None]:
    """One SEARCH or SORT return option; PARTIAL comes with its range (RFC 5267 §4.4
    ``partial-range = nz-number ":" nz-number``, either order, as Dovecot reads it)."""
    option = r.word(f"a {what} return option")
    if option not in known:
        raise Syntax(f"unknown {what} return option {show(option.encode())}")
    if option != "PARTIAL":
        return option, None
    r.sp("a partial range")
    low = r.number("a partial range", NUMBER_MAX, 1)
    r.expect(b":", '":" in a partial range')
    high = r.number("a partial range", NUMBER_MAX, 1)
    return option, (min(low, high), max(low, high))


def check_returns(options: list[str]) -> tuple[str, ...]:
    """The return options as the handler sees them: an empty list means (ALL) (RFC 4731
    §3.1), and so does one with only CONTEXT, a hint (RFC 5267 §4.2), as in Dovecot;
    PARTIAL with ALL is BAD (RFC 5267 §4.4 asks for a part of the result instead of all
    of it; Dovecot refuses the pair the same way)."""
    if "PARTIAL" in options and "ALL" in options:
        raise Syntax("PARTIAL conflicts with ALL")
    return tuple(o for o in options if o != "CONTEXT") or ("ALL",)


def _reach(r: Reader, depth: int) -> None:
    """Note that the criteria tree reaches ``depth`` (counted as the store counts it: one
    level per NOT, OR and AND of several keys); deeper than ``max_search_depth`` is
    ``BAD [LIMIT]`` now rather than ``NO [LIMIT]`` from the store later."""
    if depth > r.max_search_depth:
        raise Syntax(f"search keys nested deeper than {r.max_search_depth}", code="LIMIT")
    if depth > r.search_peak:
        r.search_peak = depth


def _search_key(r: Reader) -> Criteria:
    """One RFC 3501 §6.4.4 search key (plus RFC 7162 §3.1.5 MODSEQ)."""
    r.search_depth += 1
    _reach(r, r.search_depth)
    c = r.peek()
    if c == LPAREN:
        r.open("a search key")
        keys = [_search_key(r)]
        while not r.take_close():
            r.sp("a search key")
            keys.append(_search_key(r))
        key = keys[0] if len(keys) == 1 else And(tuple(keys))
    elif 0x30 <= c <= 0x39 or c == 0x2A or c == 0x24:  # digits, "*", "$" (RFC 5182)
        key = Seq(r.seqset())
    else:
        word = r.word("a search key")
        key = _search_word(r, word)
    r.search_depth -= 1
    return key


def _search_word(r: Reader, word: str) -> Criteria:
    simple = _SEARCH_SIMPLE.get(word)
    if simple is not None:
        if not isinstance(simple, All | Flag):
            _reach(r, r.search_depth + 1)  # NEW and OLD are a NOT or an AND of flags
        return simple
    if word in _SEARCH_HEADERS:
        r.sp(f"a string after {word}")
        field = _SEARCH_HEADERS[word]
        return Header(field, _search_string(r), address=field != "subject")
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
    if word in _SEARCH_WITHIN:
        r.sp(f"a number of seconds after {word}")
        return Within(_SEARCH_WITHIN[word], r.nz_number("a number of seconds"))
    if word in ("EMAILID", "THREADID"):
        r.sp(f"an object id after {word}")
        value = r.atom("an object id").decode("ascii", "replace")
        return EmailId(value) if word == "EMAILID" else ThreadId(value)
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
        if r.peek() == DQ:  # RFC 7162 search-modseq-ext: entry name and type, ignored
            entry = r.quoted()
            if not entry.lower().startswith(b"/flags/"):
                r.fail('an entry name like "/flags/\\\\Seen"')
            r.sp("an entry type")
            if r.word("an entry type") not in ("PRIV", "SHARED", "ALL"):
                r.fail("an entry type (priv, shared or all)")
            r.sp("a mod-sequence")
        return ModSeq(r.modseq("a mod-sequence", zero_ok=True))
    raise Syntax(f"unknown search key {show(word.encode())}")


def _search_string(r: Reader, what: str = "search string") -> str:
    return r.utf8_text(r.astring(f"a {what}"), what)
