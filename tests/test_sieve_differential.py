"""Differential test: popgate's Sieve and Pigeonhole's sieve-test agree on every pair.

Corpus: 200 generated messages (gateway sample mail) plus the hand-made edge cases in
tests/sieve_corpus/messages, against every script in tests/sieve_corpus/scripts. For each
(message, script) pair the folders, their flags and whether discard ran must be equal.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path

import pytest

from gateway.sieve import Discard, Envelope, Redirect, Result, Vacation, compile_script, run
from gateway.testing.pigeonhole import (
    Outcome,
    SieveTestNotInstalled,
    find_sieve_test,
    normalise_flags,
    normalise_mailbox,
    pigeonhole,
)
from gateway.testing.samplemail import generate

CORPUS = Path(__file__).parent / "sieve_corpus"
GENERATED = 200
MAILBOXES = (
    "INBOX", "Lists", "Family", "Shop", "Work", "Archive", "Junk", "Dup", "Misc",
    "Dated", "Body", "Vars", "Encoded",
)  # fmt: skip
RECIPIENT = "alice@example.org"
DEFAULT_SENDER = "sender@example.net"

EXCLUDED: dict[tuple[str, str], str] = {}
"""(message, script) pairs to skip, with the reason: none. The two rules where Pigeonhole is
demonstrably wrong per RFC live in tests/sieve_corpus/pigeonhole-bugs/ instead, each with its
reason, and `test_pigeonhole_bugs_are_still_bugs` checks both sides of each."""

BUGS = CORPUS / "pigeonhole-bugs"
BUG_MESSAGE = CORPUS / "messages" / "09-negative-zone.eml"
BUG_EXPECTED = {
    # script: (popgate's answer, per RFC; Pigeonhole 0.5's answer)
    "matches-qmark-star": ({"INBOX"}, {"Misc"}),
    "date-index": ({"Misc"}, {"INBOX"}),
}


class CorpusEnvironment:
    """The world both interpreters see: the mailboxes above, no duplicate history, now."""

    def mailbox_exists(self, name: str) -> bool:
        return normalise_mailbox(name) in MAILBOXES

    def seen(self, id: str, handle: str, period: int) -> bool:
        return False

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


def _envelope_from(raw: bytes) -> str:
    m = re.search(rb"^Return-Path:\s*<([^>]*)>", raw, re.MULTILINE | re.IGNORECASE)
    return m.group(1).decode() if m else DEFAULT_SENDER


def outcome_of(result: Result) -> Outcome:
    folders = frozenset(
        (normalise_mailbox(box), normalise_flags(flags)) for box, flags in result.folders().items()
    )
    vacations = [a.period for a in result.actions if isinstance(a, Vacation)]
    return Outcome(
        folders,
        any(isinstance(a, Discard) for a in result.actions),
        frozenset(a.address.lower() for a in result.actions if isinstance(a, Redirect)),
        vacations[0] if vacations else None,
    )


def corpus_messages() -> list[tuple[str, bytes]]:
    generated = [(f"gen-{i:03d}", raw) for i, raw in enumerate(generate(GENERATED, seed=16))]
    edge = [(p.stem, p.read_bytes()) for p in sorted((CORPUS / "messages").glob("*.eml"))]
    return generated + edge


def corpus_scripts() -> list[tuple[str, str]]:
    return [(p.stem, p.read_text()) for p in sorted((CORPUS / "scripts").glob("*.sieve"))]


def _sieve_test_or_skip() -> None:
    try:
        find_sieve_test()
    except SieveTestNotInstalled as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


def differential() -> tuple[int, list[str], float]:
    """Run every pair through both; return (pairs compared, disagreements, seconds)."""
    messages, scripts = corpus_messages(), corpus_scripts()
    env = CorpusEnvironment()
    started = time.monotonic()
    with pigeonhole(MAILBOXES) as ph:
        script_paths = {n: ph.add_file("scripts", f"{n}.sieve", s.encode()) for n, s in scripts}
        compiled = {n: compile_script(s, sending=True) for n, s in scripts}
        pairs, keys, ours = [], [], []
        for mname, raw in messages:
            path = ph.add_file("messages", f"{mname}.eml", raw)
            sender = _envelope_from(raw)
            for sname, _ in scripts:
                if (mname, sname) in EXCLUDED:
                    continue
                pairs.append((script_paths[sname], path, sender, RECIPIENT))
                keys.append((mname, sname))
                result = run(compiled[sname], raw, Envelope(sender, RECIPIENT), env)
                assert result.error is None, (mname, sname, result.error)
                ours.append(outcome_of(result))
        theirs = ph.run_many(pairs)
    problems = [
        f"{m} × {s}: popgate {o} != pigeonhole {t}"
        for (m, s), o, t in zip(keys, ours, theirs, strict=True)
        if o != t
    ]
    return len(pairs), problems, time.monotonic() - started


@pytest.mark.dovecot
def test_popgate_agrees_with_pigeonhole_on_every_pair() -> None:
    """≥200 messages × ≥15 scripts: same folders, flags and discard as sieve-test."""
    _sieve_test_or_skip()
    assert len(corpus_messages()) >= 220 and len(corpus_scripts()) >= 15
    count, problems, seconds = differential()
    print(f"differential: {count} pairs, {len(problems)} disagreements, {seconds:.1f} s")
    assert not problems, "\n".join(problems[:40])


@pytest.mark.dovecot
@pytest.mark.parametrize("name", sorted(BUG_EXPECTED))
def test_pigeonhole_bugs_are_still_bugs(name: str) -> None:
    """Each excluded rule: popgate follows the RFC and Pigeonhole (still) does not.

    When a Pigeonhole upgrade fixes one, this fails: move the rule back into scripts/.
    """
    _sieve_test_or_skip()
    ours, theirs = BUG_EXPECTED[name]
    source = (BUGS / f"{name}.sieve").read_text()
    raw = BUG_MESSAGE.read_bytes()
    result = run(
        compile_script(source), raw, Envelope(DEFAULT_SENDER, RECIPIENT), CorpusEnvironment()
    )
    assert set(result.folders()) == ours
    with pigeonhole(MAILBOXES) as ph:
        script = ph.add_file("scripts", f"{name}.sieve", source.encode())
        message = ph.add_file("messages", "bug.eml", raw)
        outcome = ph.run(script, message, DEFAULT_SENDER, RECIPIENT)
    assert {box for box, _ in outcome.folders} == theirs
