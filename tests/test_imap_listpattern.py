"""The LIST pattern matcher (gateway/imap/listpattern.py) against a brute-force reference.

The reference is the RFC 3501 §6.3.8 definition read literally (``*`` any sequence,
``%`` any sequence without the delimiter, INBOX case-insensitive in its leading level,
§5.1), tried every possible way: exponential, so only for short inputs, which is where
hypothesis looks. The matcher must agree with it everywhere and do work linear in the
name whatever the pattern (issue 20, item 1).
"""

from __future__ import annotations

import itertools
import math
import time
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.listpattern import WORD_BITS, PatternSet, matcher, normalise

DELIMITER = "/"
_CASINGS = ["".join(c) for c in itertools.product(*((ch, ch.lower()) for ch in "INBOX"))]


@cache
def _plain(pattern: str, name: str) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_plain(rest, name[i:]) for i in range(len(name) + 1))
    if head == "%":
        for i in range(len(name) + 1):
            if _plain(rest, name[i:]):
                return True
            if i < len(name) and name[i] == DELIMITER:
                return False
        return False
    return bool(name) and name[0] == head and _plain(rest, name[1:])


def reference(pattern: str, name: str) -> bool:
    """RFC 3501 §6.3.8 by brute force, with every spelling of a leading INBOX."""
    if name == "INBOX" or name.startswith("INBOX" + DELIMITER):
        return any(_plain(pattern, spelling + name[5:]) for spelling in _CASINGS)
    return _plain(pattern, name)


def levels_of(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts) + 1)]


_chars = st.sampled_from("ab/%*INBOXinbox")
_patterns = st.text(_chars, max_size=9)
_names = st.one_of(
    st.text(st.sampled_from("ab/IiNnBbOoXx%*"), max_size=9),
    st.builds(lambda rest: "INBOX" + rest, st.text(st.sampled_from("ab/x"), max_size=5)),
)


@settings(max_examples=1500, deadline=None)
@given(_patterns, _names)
def test_matches_exactly_what_the_rfc_definition_matches(pattern: str, name: str) -> None:
    assert matcher(pattern)(name) == reference(pattern, name), (pattern, name)


@settings(max_examples=500, deadline=None)
@given(_patterns, _names)
def test_normalising_a_pattern_keeps_its_meaning(pattern: str, name: str) -> None:
    """A run of wildcards with a ``*`` is one ``*``, a run of ``%`` one ``%``."""
    short = normalise(pattern)
    assert reference(short, name) == reference(pattern, name), (pattern, short, name)
    assert "**" not in short and "%%" not in short and "%*" not in short and "*%" not in short


@settings(max_examples=500, deadline=None)
@given(st.lists(_patterns, max_size=4), _names)
def test_several_patterns_match_a_name_any_of_them_matches(patterns: list[str], name: str) -> None:
    """The union automaton, superiors included (LIST lists matching superiors too)."""
    compiled = PatternSet(patterns)
    assert compiled.matches(name) == any(reference(p, name) for p in patterns)
    expected = [level for level in levels_of(name) if any(reference(p, level) for p in patterns)]
    assert compiled.matching_levels(name) == expected, (patterns, name)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(_chars, max_size=200), min_size=1, max_size=4), _names)
def test_work_is_linear_in_the_name_whatever_the_patterns(patterns: list[str], name: str) -> None:
    compiled = PatternSet(patterns)
    words = math.ceil(compiled.states / WORD_BITS)
    compiled.matching_levels(name)
    assert compiled.steps <= (len(name) + 1) * words


def test_rfc3501_wildcards_and_case() -> None:
    """§6.3.8: ``%`` stops at the delimiter, ``*`` does not; §5.1: only INBOX ignores case."""
    assert matcher("%")("Work") and not matcher("%")("Work/Admin")
    assert matcher("*")("Work/Admin") and matcher("Work/*")("Work/a/b")
    assert matcher("Work/%")("Work/Admin") and not matcher("Work/%")("Work/a/b")
    assert matcher("inbox")("INBOX") and matcher("iNbOx/%")("INBOX/Sub")
    assert not matcher("work")("Work") and not matcher("inbox%")("INBOXES")
    assert matcher("%x%")("INBOX") and matcher("*b*")("INBOX")  # some spelling of INBOX


def test_the_red_team_pattern_costs_one_step_per_character() -> None:
    """``%*`` × 38 + ``q`` against 20 characters: the backtracking regex this replaced took
    about a minute per name; the automaton reads each character once."""
    compiled = PatternSet(["%*" * 38 + "q", "*%" * 38 + "7"])
    names = [f"{'a' * 15}{i:05d}" for i in range(6000)]
    started = time.perf_counter()
    matched = [name for name in names if compiled.matches(name)]
    assert matched == [name for name in names if name.endswith("7")]
    assert compiled.steps == 6000 * 21
    assert time.perf_counter() - started < 5.0  # a safety net; the steps are the measure
