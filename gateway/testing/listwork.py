"""Counting the work LIST and LSUB do on client-chosen patterns, for tests and fuzzing.

The rule (issue 20, README "Security model"): a pattern costs at most linear work per
mailbox name, each name is read once per command, and one command's patterns compile to
at most :data:`gateway.imap.mailboxes.MAX_PATTERN_STATES` states. :func:`counting`
swaps the automaton LIST uses for :class:`CountingPatternSet`, which remembers what it
read, and :func:`assert_linear` checks the rule on everything recorded; the measure is
the automaton's own step count, never wall time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from gateway.imap import mailboxes
from gateway.imap.listpattern import WORD_BITS, PatternSet


class CountingPatternSet(PatternSet):
    """The LIST automaton, remembering the names each instance read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read: list[str] = []

    def matching_levels(self, name: str) -> list[str]:
        self.read.append(name)
        return super().matching_levels(name)


@contextmanager
def counting() -> Iterator[list[CountingPatternSet]]:
    """While active, every automaton LIST/LSUB compiles is recorded in the yielded list."""
    made: list[CountingPatternSet] = []

    def make(*args: object, **kwargs: object) -> CountingPatternSet:
        compiled = CountingPatternSet(*args, **kwargs)
        made.append(compiled)
        return compiled

    with mock.patch.object(mailboxes, "PatternSet", make):
        yield made


def assert_linear(made: list[CountingPatternSet]) -> None:
    """Each automaton that read names is within MAX_PATTERN_STATES, read each name at most
    once, and did at most (len(name) + 1) × words of work per name."""
    for compiled in made:
        if not compiled.read:
            continue
        assert compiled.states <= mailboxes.MAX_PATTERN_STATES, compiled.states
        assert len(compiled.read) == len(set(compiled.read)), compiled.read
        words = max(1, math.ceil(compiled.states / WORD_BITS))
        assert compiled.steps <= sum(len(n) + 1 for n in compiled.read) * words, compiled.steps
