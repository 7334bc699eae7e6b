"""Comparators (RFC 4790 via RFC 5228 §2.7.3) and match types, including relational and regex.

One function, `match`, answers "does any value match any key?" and returns the match
variables of RFC 5229 §3.2 when it does, so every test shares the same semantics.

Regex safety (issue 16 asks the reactor never to stall on a user's pattern): :regex keys
run on `gateway.sieve.regex`, a Pike VM whose time is linear in the subject for any pattern,
so no pattern shape needs refusing; pattern size, compiled size and subject length
(MAX_REGEX_SUBJECT, longer values are cut) are bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from gateway.sieve.errors import SieveRuntimeError
from gateway.sieve.regex import Regex, RegexError, compile_regex

COMPARATORS = frozenset({"i;ascii-casemap", "i;octet", "i;ascii-numeric"})
"""Comparators every script may name (RFC 5228 §2.7.3; i;ascii-numeric is RFC 4790 §9.1)."""

MAX_REGEX_LENGTH = 1024
"""Longest :regex key accepted, in characters."""

MAX_REGEX_SUBJECT = 16 * 1024
"""Longest string a :regex is run on; longer values are cut (a header is rarely this big)."""

MAX_MATCH_VARIABLES = 10
"""Match variables ${0}..${9} are kept (RFC 5229 §3.2 lets an implementation bound this)."""

RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
"""Relational operators of RFC 5231 §4."""


def _casemap(value: str) -> str:
    """i;ascii-casemap folds A-Z only (RFC 4790 §9.2); other characters compare as octets."""
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _numeric(value: str) -> int | None:
    """i;ascii-numeric (RFC 4790 §9.1): leading digits; None (positive infinity) without."""
    m = re.match(r"[0-9]+", value)
    return int(m.group(0)) if m else None


def _relate(cmp: int, relation: str) -> bool:
    return {
        "gt": cmp > 0,
        "ge": cmp >= 0,
        "lt": cmp < 0,
        "le": cmp <= 0,
        "eq": cmp == 0,
        "ne": cmp != 0,
    }[relation]


def compare(comparator: str, left: str, right: str) -> int:
    """Order two values under a comparator: negative, zero or positive."""
    if comparator == "i;ascii-numeric":
        a, b = _numeric(left), _numeric(right)
        if a is None or b is None:
            return (a is None) - (b is None)
        return (a > b) - (a < b)
    if comparator == "i;ascii-casemap":
        left, right = _casemap(left), _casemap(right)
    lb, rb = left.encode("utf-8", "surrogatepass"), right.encode("utf-8", "surrogatepass")
    return (lb > rb) - (lb < rb)


@lru_cache(maxsize=512)
def _wildcard_regex(pattern: str, casemap: bool) -> re.Pattern[str]:
    """RFC 5228 §2.7.1 :matches: "*" and "?" are wildcards, "\\" quotes the next character.

    Each wildcard is a non-greedy group so that the match variables get the leftmost
    shortest expansion of RFC 5229 §3.2's example ("[*] *").
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "*":
            out.append("(.*?)")
        elif ch == "?":
            out.append("(.)")
        elif casemap and ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def check_regex(pattern: str) -> str | None:
    """Return why `pattern` is refused (too long, or not a regex the engine accepts) or None."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"regex longer than {MAX_REGEX_LENGTH} characters"
    try:
        _compiled_regex(pattern, False)
    except RegexError as exc:
        return f"invalid regex: {exc}"
    return None


@lru_cache(maxsize=512)
def _compiled_regex(pattern: str, casemap: bool) -> Regex:
    return compile_regex(pattern, casemap)


def _captures(groups: Iterable[str | None], whole: str) -> list[str]:
    out = [whole] + [g or "" for g in groups]
    return out[:MAX_MATCH_VARIABLES]


def match(
    values: Iterable[str],
    keys: list[str],
    match_type: str,
    comparator: str,
    relation: str | None = None,
) -> tuple[bool, list[str] | None]:
    """RFC 5228 §2.7: true if any value matches any key; returns match variables if any.

    `match_type` is is/contains/matches/regex/value/count; :count (RFC 5231 §4.2) counts
    the values and compares that number, as a decimal string, to each key.
    """
    if match_type == "count":
        assert relation is not None
        count = str(sum(1 for _ in values))
        return any(_relate(compare(comparator, count, key), relation) for key in keys), None
    casemap = comparator == "i;ascii-casemap"
    for value in values:
        for key in keys:
            if match_type == "is":
                if comparator == "i;ascii-numeric":
                    if compare(comparator, value, key) == 0:
                        return True, None
                elif (_casemap(value) == _casemap(key)) if casemap else value == key:
                    return True, None
            elif match_type == "contains":
                if (_casemap(key) in _casemap(value)) if casemap else key in value:
                    return True, None
            elif match_type == "matches":
                m = _wildcard_regex(key, casemap).fullmatch(value)
                if m is not None:
                    return True, _captures(m.groups(), value)
            elif match_type == "regex":
                try:
                    found = _compiled_regex(key, casemap).search(value[:MAX_REGEX_SUBJECT])
                except RegexError as exc:
                    raise SieveRuntimeError(f"invalid regex {key!r}: {exc}") from None
                if found is not None:
                    return True, found[:MAX_MATCH_VARIABLES]
            elif match_type == "value":
                assert relation is not None
                if _relate(compare(comparator, value, key), relation):
                    return True, None
    return False, None


def quote_wildcard(value: str) -> str:
    """RFC 5229 §4.1 :quotewildcard: backslash before "*", "?" and "\\"."""
    return re.sub(r"([*?\\])", r"\\\1", value)


def quote_regex(value: str) -> str:
    """Pigeonhole's :quoteregex (draft-ietf-sieve-regex §3): escape regex specials."""
    return re.sub(r"([\\^$.\[\]|()?*+{}])", r"\\\1", value)
