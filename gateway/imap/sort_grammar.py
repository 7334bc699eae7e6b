"""The SORT and THREAD grammar: RFC 5256 §4, RFC 5267 §3-4 (ESORT, PARTIAL), RFC 5957.

``SORT [RETURN (opts)] (criteria) charset keys`` and ``THREAD algorithm charset keys``;
the search keys are read by :func:`gateway.imap.search_grammar.search_program`, so
they obey the same depth limit as SEARCH.
"""

from __future__ import annotations

from gateway.core.sorting import DISPLAY_SORT_KEYS, SORT_KEYS, SortCriterion
from gateway.imap.command import Command, Sort, Thread
from gateway.imap.reader import Reader, Syntax, show
from gateway.imap.search_grammar import (
    SUPPORTED_CHARSETS,
    check_returns,
    return_option,
    search_program,
)

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
"""RFC 5256 §3 threading algorithms, as announced (``THREAD=...``)."""

SORT_RETURN_OPTIONS = frozenset(("MIN", "MAX", "ALL", "COUNT", "PARTIAL", "UPDATE", "CONTEXT"))
"""RFC 5267 §3.1 ESORT result options (RFC 4731's four), §4.4 PARTIAL and §4.2-4.3
CONTEXT (a hint, ignored) and UPDATE."""

_ALL_SORT_KEYS = SORT_KEYS | DISPLAY_SORT_KEYS


def cmd_sort(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """SORT / UID SORT, RFC 5256 §4 ``sort`` with RFC 5267 ``sort-return-opts``."""
    r.sp("sort criteria")
    returns = None
    partial = None
    if r.peek_word() == "RETURN":
        r.pos += 6
        r.sp("sort return options")
        options: list[str] = []
        for option, window in r.paren_list(
            lambda: return_option(r, SORT_RETURN_OPTIONS, "sort"), "return options", empty_ok=True
        ):
            options.append(option)
            if window is not None:
                partial = window
        # RFC 4731 §3.1 (RFC 5267 §3.1): an empty list means (ALL).
        returns = check_returns(options)
        r.sp("sort criteria")
    program = tuple(r.paren_list(lambda: _criterion(r), "sort criteria"))
    r.sp("a charset")
    charset = _charset(r)
    r.sp("search criteria")
    criteria = search_program(r, charset)
    return Sort(
        tag=tag,
        name=name,
        uid=uid,
        program=program,
        charset=charset,
        criteria=criteria,
        returns=returns,
        partial=partial,
    )


def cmd_thread(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """THREAD / UID THREAD, RFC 5256 §4 ``thread``."""
    r.sp("a threading algorithm")
    algorithm = r.word("a threading algorithm")
    if algorithm not in THREAD_ALGORITHMS:
        raise Syntax(f"unknown threading algorithm {show(algorithm.encode())}")
    r.sp("a charset")
    charset = _charset(r)
    r.sp("search criteria")
    criteria = search_program(r, charset)
    return Thread(
        tag=tag, name=name, uid=uid, algorithm=algorithm, charset=charset, criteria=criteria
    )


def _criterion(r: Reader) -> SortCriterion:
    """``["REVERSE" SP] sort-key`` (RFC 5256 §4, RFC 5957 §4)."""
    word = r.word("a sort key")
    reverse = word == "REVERSE"
    if reverse:
        r.sp("a sort key after REVERSE")
        word = r.word("a sort key")
    if word not in _ALL_SORT_KEYS:
        raise Syntax(f"unknown sort key {show(word.encode())}")
    return SortCriterion(word, reverse)


def _charset(r: Reader) -> str:
    """RFC 5256 §3: a charset is required; an unknown one is ``NO [BADCHARSET]``."""
    charset = r.astring("a charset name").decode("ascii", "replace").upper()
    if charset not in SUPPORTED_CHARSETS:
        raise Syntax(
            "charset not supported",
            code=f"BADCHARSET ({' '.join(SUPPORTED_CHARSETS)})",
            status="NO",
        )
    return charset
