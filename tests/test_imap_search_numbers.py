"""SEARCH's numbering of the store's UIDs for a session's view (gateway/imap/searching.py):
the no-gap shortcut and the merge give what a lookup of each UID gives, and the numbers
are written as RFC 3501 §7.2.5 lists them."""

from __future__ import annotations

import bisect
import random
from array import array

import pytest

from gateway.imap.searching import _numbers, in_view


def _reference(view: list[int], found: list[int]) -> tuple[list[int], list[int]]:
    matched, seqs = [], []
    for uid in found:
        i = bisect.bisect_left(view, uid)
        if i < len(view) and view[i] == uid:
            matched.append(uid)
            seqs.append(i + 1)
    return matched, seqs


@pytest.mark.parametrize("seed", range(40))
def test_in_view_agrees_with_a_lookup_of_each_uid(seed: int) -> None:
    """Views with and without gaps, starting at 1 or later, empty; the store's answer
    holds messages the view does not know yet (arrived, larger UIDs) or any more
    (expunged, so absent from the answer)."""
    rng = random.Random(seed)
    first = rng.choice([1, 1, 7, 300])
    count = rng.choice([0, 1, 5, 60])
    view = list(range(first, first + count))
    if seed % 2:  # gaps: messages expunged since the mailbox was numbered
        view = [u for u in view if rng.random() < 0.7]
    arrived = [first + count + i for i in range(rng.randint(0, 3))]
    store = sorted(
        {u for u in view if rng.random() < 0.5} | {u for u in arrived if rng.random() < 0.7}
    )
    assert in_view(array("I", view), store) == _reference(view, store)


def test_numbers_are_decimal_and_space_separated() -> None:
    assert _numbers([]) == b""
    assert _numbers([7]) == b"7"
    assert _numbers([1, 2, 10, 4294967295]) == b"1 2 10 4294967295"
