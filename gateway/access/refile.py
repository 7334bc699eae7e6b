"""Refiling mail already in a mailbox through the owner's Sieve script, on request
(``popgate sieve run USER --mailbox INBOX``; filters otherwise apply to new mail only),
and describing a Sieve outcome one action a line, as Pigeonhole's ``sieve-test`` does.

Refiling uses normal store copies and moves (RFC 6851 MOVE semantics: one transaction per
message), so IMAP clients watching either mailbox see EXPUNGE/EXISTS as for any move.
What refiling never does: delete mail (a ``discard`` leaves the message where it is),
record RFC 7352 duplicate IDs (the messages were delivered long ago), send mail (a
``redirect`` or ``vacation`` is for mail as it arrives; a redirected message stays where it
is), or touch a message the script keeps (``keep``/implicit keep leaves it in place, adding any flags).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.access.filtering import ScriptCache, StoreEnvironment, envelope_for
from gateway.sieve import Discard, FileInto, Keep, Redirect, Result, Vacation, run
from gateway.store.interfaces import MailboxNotFound, MailStore
from gateway.store.rules import filing_flags, filing_name
from gateway.store.scripts import ScriptStore


def describe(result: Result) -> list[str]:
    """One line per final action, like ``sieve-test``: ``keep``, ``discard``,
    ``fileinto "Work" flags (\\Flagged)``; a runtime error comes first as ``error: ...``."""
    lines = [f"error: {result.error}"] if result.error else []
    for action in result.actions:
        if isinstance(action, Discard):
            lines.append("discard")
            continue
        if isinstance(action, Redirect):
            lines.append(f'redirect{" :copy" if action.copy else ""} "{action.address}"')
            continue
        if isinstance(action, Vacation):
            lines.append(f"vacation (at most once per {action.period} s per sender)")
            continue
        if isinstance(action, Keep):
            text = "keep"
        else:
            assert isinstance(action, FileInto)
            quoted = action.mailbox.replace("\\", "\\\\").replace('"', '\\"')
            text = f'fileinto{" :create" if action.create else ""} "{quoted}"'
        if action.flags:
            text += f" flags ({' '.join(action.flags)})"
        lines.append(text)
    return lines


@dataclass
class RefileReport:
    """What a refile did, for the CLI."""

    messages: int = 0
    moved: int = 0
    copied: int = 0
    kept: int = 0
    errors: int = 0
    lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "moved": self.moved,
            "copied": self.copied,
            "kept": self.kept,
            "errors": self.errors,
            "lines": self.lines,
        }


class NoActiveScript(Exception):
    """The owner has no active script: nothing to refile with."""


def refile(
    store: MailStore,
    ledger: object,
    scripts: ScriptStore,
    owner: str,
    mailbox: str,
    *,
    cache: ScriptCache | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[RefileReport]:
    """Run the owner's active script over every message now in ``mailbox``; yields the
    report after each message (so a caller can spread the work over reactor turns) and
    raises NoActiveScript or MailboxNotFound first."""
    active = scripts.active_script(owner)
    if active is None:
        raise NoActiveScript(f"{owner} has no active Sieve script")
    script = (cache or ScriptCache()).get(active.text)
    source = store.get_mailbox(owner, mailbox)
    env = StoreEnvironment(store, ledger, owner, clock)
    report = RefileReport()
    for row in store.message_rows(source.id):
        try:
            raw = store.message_bytes(source.id, row.uid)
        except KeyError:
            continue  # expunged meanwhile
        result = run(script, raw, envelope_for(raw, None), env)
        report.messages += 1
        if result.error:
            report.errors += 1
        _apply(store, owner, source.name, source.id, row.uid, result, report)
        yield report


def _apply(
    store: MailStore,
    owner: str,
    source_name: str,
    source_id: int,
    uid: int,
    result: Result,
    report: RefileReport,
) -> None:
    stay_flags: tuple[str, ...] | None = None
    moves: list[tuple[int, tuple[str, ...]]] = []
    for action in result.actions:
        if isinstance(action, Keep):
            stay_flags = action.flags
        elif isinstance(action, FileInto):
            name = filing_name(action.mailbox)
            if name is None:
                stay_flags = stay_flags or ()
                continue
            if name == source_name:
                stay_flags = action.flags
                continue
            try:
                target = store.get_mailbox(owner, name)
            except MailboxNotFound:
                if not action.create:
                    stay_flags = stay_flags or ()
                    continue
                target = store.create_mailbox(owner, name)
            moves.append((target.id, action.flags))
    if not moves:
        stay_flags = stay_flags or ()  # keep, or a discard: refiling never deletes mail
    for index, (target_id, flags) in enumerate(moves):
        last = index == len(moves) - 1
        move = last and stay_flags is None
        pairs = store.copy(source_id, [uid], target_id, move=move)
        for _old, new in pairs:
            if flags:
                _add_flags(store, target_id, new, flags)
        if move:
            report.moved += 1
        else:
            report.copied += 1
    if stay_flags is not None:
        report.kept += 1
        if stay_flags:
            _add_flags(store, source_id, uid, stay_flags)


def _add_flags(store: MailStore, mailbox_id: int, uid: int, flags: tuple[str, ...]) -> None:
    valid = list(filing_flags(flags).values())
    if valid:
        store.store_flags(mailbox_id, [uid], "+", valid)
