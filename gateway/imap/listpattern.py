"""LIST and LSUB pattern matching (RFC 3501 §6.3.8) in time linear in the name, whatever the pattern.

A client chooses the pattern and the server matches it against every name the user has,
on the reactor thread, so a pattern must never cost more than a bounded amount per name.
Translating it to a backtracking regular expression (``*`` → ``.*``) did not: the regex
for ``%*%*%*%*%*%*%*%*q`` tried every way of sharing a 20-character name among 16
wildcards, tens of seconds of CPU for that one name (issue 20, item 1).

Here a pattern is first normalised: a run of wildcards containing ``*`` becomes one
``*`` and a run of ``%`` one ``%`` (both match exactly the strings the run matched).
Then all the patterns of one command are compiled into a single nondeterministic
automaton, simulated with its set of live states held as the bits of an integer: each
character of a name costs a fixed handful of operations on that bit set, and nothing is
ever retried. Matching a name of *n* characters against patterns with *m* states in all
costs O(n × m / word size), and :attr:`PatternSet.steps` counts that work so a caller
can bound it or pause between chunks of it.

Semantics (RFC 3501 §6.3.8): ``*`` matches any sequence of characters, the hierarchy
delimiter included; ``%`` matches any sequence without the delimiter; every other
character matches itself exactly, except that INBOX is case-insensitive (§5.1): a name
that is ``INBOX`` or starts with ``INBOX/`` matches if the pattern matches it with *some*
spelling of that leading ``INBOX`` (``inbox/%``, ``In*`` and ``*box`` reach it; every
other name is compared exactly). Pure: no I/O (only the store's naming constants).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.store.interfaces import DELIMITER, INBOX

STAR = "*"
"""Matches any sequence of characters, the hierarchy delimiter included."""

PERCENT = "%"
"""Matches any sequence of characters without the hierarchy delimiter."""

WILDCARDS = STAR + PERCENT
"""The LIST wildcards (RFC 3501 §6.3.8); a mailbox named with one could never be listed alone."""

WORD_BITS = 64
"""The bit-set width one unit of :attr:`PatternSet.steps` stands for."""


def normalise(pattern: str) -> str:
    """``pattern`` with every run of wildcards collapsed: a run containing ``*`` is one
    ``*``, a run of ``%`` one ``%``. The result matches exactly the same names (a run
    can match the empty string with each wildcard, and ``*`` alone can absorb whatever
    the run matched), and has no two wildcards side by side, which the automaton relies on.
    """
    out: list[str] = []
    run = ""
    for char in pattern:
        if char in WILDCARDS:
            run = STAR if STAR in (run, char) else PERCENT
            continue
        if run:
            out.append(run)
            run = ""
        out.append(char)
    if run:
        out.append(run)
    return "".join(out)


class PatternSet:
    """Several LIST patterns compiled into one automaton: a name matches if any does.

    Each normalised pattern of *k* characters gets *k* + 1 consecutive bits: bit *i*
    live means "the first *i* pattern characters have matched what was read so far";
    the last bit is the pattern's accepting state. Reading a character keeps the bits at
    wildcards that may absorb it and moves the bits at an equal literal one place on;
    then a live wildcard also makes the bit after it live (it may match nothing). No
    two wildcards are adjacent after :func:`normalise`, so one such step suffices.
    """

    def __init__(self, patterns: Iterable[str], *, delimiter: str = DELIMITER) -> None:
        self.delimiter = delimiter
        self.patterns = tuple(dict.fromkeys(normalise(p) for p in patterns))
        starts = accepts = star = percent = 0
        literals: dict[str, int] = {}
        position = 0
        for pattern in self.patterns:
            starts |= 1 << position
            for char in pattern:
                bit = 1 << position
                if char == STAR:
                    star |= bit
                elif char == PERCENT:
                    percent |= bit
                else:
                    literals[char] = literals.get(char, 0) | bit
                position += 1
            accepts |= 1 << position
            position += 1
        self.states = position
        """Bits of the automaton: the sum of the normalised patterns' lengths plus one each."""
        self.steps = 0
        """Work done so far: characters read × words of the state set (see WORD_BITS)."""
        self._words = max(1, -(-position // WORD_BITS))
        self._accepts = accepts
        self._star = star
        self._wild = star | percent
        self._literals = literals
        self._initial = self._close(starts)

    def _close(self, live: int) -> int:
        return live | ((live & self._wild) << 1)

    def matches(self, name: str) -> bool:
        """Whether ``name`` matches one of the patterns."""
        return bool(self._run(name, None))

    def matching_levels(self, name: str) -> list[str]:
        """Those of ``name``'s superior names (``a``, ``a/b`` for ``a/b/c``) and of
        ``name`` itself that match, shortest first, for the price of reading ``name``
        once. LIST needs the superiors too: a superior that does not exist itself is
        still listed (``\\Noselect``, RFC 3501 §6.3.8) when it matches."""
        found: list[str] = []
        if self._run(name, found):
            found.append(name)
        return found

    def _run(self, name: str, levels: list[str] | None) -> int:
        """Read ``name``; the accepting bits live at its end (0: no match). With
        ``levels``, also collect the superior names that match on the way."""
        delimiter = self.delimiter
        literals = self._literals
        wild, star = self._wild, self._star
        caseless = len(INBOX) if name == INBOX or name.startswith(INBOX + delimiter) else 0
        live = self._initial
        read = 0
        for index, char in enumerate(name):
            if not live:
                break
            read += 1
            if char == delimiter:
                if levels is not None and live & self._accepts:
                    levels.append(name[:index])
                kept = live & star
            else:
                kept = live & wild
            literal = literals.get(char, 0)
            if index < caseless:
                literal |= literals.get(char.lower(), 0) | literals.get(char.upper(), 0)
            live = kept | ((live & literal) << 1)
            live |= (live & wild) << 1
        self.steps += (read + 1) * self._words
        return live & self._accepts


def matcher(pattern: str, *, delimiter: str = DELIMITER) -> Callable[[str], bool]:
    """The test for names matching one pattern."""
    return PatternSet([pattern], delimiter=delimiter).matches
