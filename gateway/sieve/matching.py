"""Comparators (RFC 4790 via RFC 5228 §2.7.3) and match types, including relational and regex.

One function, `match`, answers "does any value match any key?" and returns the match
variables of RFC 5229 §3.2 when it does, so every test shares the same semantics.

Regex safety (issue 16 asks the reactor never to stall on a user's pattern): Python's `re`
backtracks, so the validator refuses the pattern shapes that backtrack exponentially —
nested quantifiers such as `(a+)+` or `(a|a)*`, and backreferences — and bounds pattern
size and quantifier count; at run time a subject longer than MAX_REGEX_SUBJECT is cut to
that length. What remains is polynomial with a small exponent on bounded input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from gateway.sieve.errors import SieveRuntimeError

COMPARATORS = frozenset({"i;ascii-casemap", "i;octet", "i;ascii-numeric"})
"""Comparators every script may name (RFC 5228 §2.7.3; i;ascii-numeric is RFC 4790 §9.1)."""

MAX_REGEX_LENGTH = 1024
"""Longest :regex key accepted, in characters."""

MAX_REGEX_QUANTIFIERS = 16
"""Most quantifiers (*, +, ?, {m,n}) one :regex key may hold."""

MAX_REGEX_SUBJECT = 64 * 1024
"""Longest string a :regex is run on; longer values are cut (a header is rarely this big)."""

MAX_MATCH_VARIABLES = 10
"""Match variables ${0}..${9} are kept (RFC 5229 §3.2 lets an implementation bound this)."""

RELATIONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
"""Relational operators of RFC 5231 §4."""

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\r\n\v\f",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r" -~",
    "graph": r"!-~",
}


def _casemap(value: str) -> str:
    """i;ascii-casemap folds A-Z only (RFC 4790 §9.2); other characters compare as octets."""
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}
_BRACKET = re.compile(r"\[\^?\]?(?:\[:[a-z]+:\]|[^\]])*\]")


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


def translate_regex(pattern: str) -> str:
    """POSIX extended regex (what Pigeonhole uses) to Python syntax: bracket classes only."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
        elif ch == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            body: list[str] = []
            while j < len(pattern) and pattern[j] != "]":
                m = re.match(r"\[:([a-z]+):\]", pattern[j:])
                if m and m.group(1) in _POSIX_CLASSES:
                    body.append(_POSIX_CLASSES[m.group(1)])
                    j += m.end()
                else:
                    body.append("\\\\" if pattern[j] == "\\" else pattern[j])
                    j += 1
            head = pattern[i + 1 : i + 1 + (1 if pattern[i + 1 : i + 2] == "^" else 0)]
            rest = "".join(body)
            skip = len(head)
            if pattern[i + 1 + skip : i + 2 + skip] == "]":
                rest = "\\]" + rest[1:]
            out.append("[" + head + rest + "]")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_regex(pattern: str) -> str | None:
    """Return why `pattern` is refused (too big, nested quantifiers, backreference) or None."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"regex longer than {MAX_REGEX_LENGTH} characters"
    if re.search(r"\\[1-9]", pattern):
        return "backreferences are not supported in :regex"
    try:
        re.compile(translate_regex(pattern))
    except re.error as exc:
        return f"invalid regex: {exc}"
    # Walk groups: a quantified group that itself contains a quantifier (or an
    # alternation) can backtrack exponentially.
    stack: list[bool] = []  # per open group: contains a quantifier or '|'
    count = 0
    i = 0
    quant = re.compile(r"[*+?]|\{[0-9]+(,[0-9]*)?\}")
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            m = _BRACKET.match(pattern, i)
            i = m.end() if m else len(pattern)
            continue
        if ch == "(":
            stack.append(False)
        elif ch == "|" and stack:
            stack[-1] = True
        elif ch == ")" and stack:
            inner = stack.pop()
            m = quant.match(pattern, i + 1)
            if m and m.group(0) != "?":
                if inner:
                    return "nested quantifiers (like (a+)+) are refused: they can backtrack"
                count += 1
                if stack:
                    stack[-1] = True
                i = m.end()
                continue
            if inner and stack:
                stack[-1] = True
        elif quant.match(pattern, i) and i > 0:
            count += 1
            if stack:
                stack[-1] = True
        i += 1
    if count > MAX_REGEX_QUANTIFIERS:
        return f"more than {MAX_REGEX_QUANTIFIERS} quantifiers in one regex"
    return None


@lru_cache(maxsize=512)
def _compiled_regex(pattern: str, casemap: bool) -> re.Pattern[str]:
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if casemap else 0)
    try:
        return re.compile(translate_regex(pattern), flags)
    except re.error as exc:
        raise SieveRuntimeError(f"invalid regex {pattern!r}: {exc}") from None


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
                m = _compiled_regex(key, casemap).search(value[:MAX_REGEX_SUBJECT])
                if m is not None:
                    return True, _captures(m.groups(), m.group(0))
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
