"""What a Sieve run decides: the final actions, the duplicate IDs to track, and any error.

The fetcher applies `Result.actions` inside the transaction that files the message, so
exactly-once holds per final mailbox (issue 16). Keep and a fileinto "INBOX" are one and the
same final action (RFC 5228 §4.3 keeps to the default mailbox; RFC 5228 §2.10.3 asks that a
message be filed at most once per mailbox), so the result merges them and unions the flags
(RFC 5232 §3, as Pigeonhole does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class Keep:
    """File into the default mailbox (INBOX), with these IMAP flags (RFC 5228 §4.3)."""

    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FileInto:
    """File into `mailbox`, creating it first if `create` (RFC 5490 §3.2)."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True, slots=True)
class Discard:
    """The script discarded the message (RFC 5228 §4.4); other actions may still file it."""


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the message on to `address` (RFC 5228 §4.2). Without `copy` it cancels the
    implicit keep; with `copy` (RFC 3894 §3) the message is also kept."""

    address: str
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Vacation:
    """Answer the sender with `reason` at most once per `period` seconds per sender and
    `handle` (RFC 5230 §4; `:seconds` of RFC 6131). Whether a reply is actually due (the
    sender's history, auto-submitted mail, lists, RFC 5230 §4.5) is the caller's decision:
    only it knows the user's addresses and the response record. Does not cancel the
    implicit keep (RFC 5230 §4.7)."""

    reason: str
    handle: str
    period: int
    subject: str | None = None
    from_address: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False


Action = Keep | FileInto | Discard | Redirect | Vacation


@dataclass(frozen=True, slots=True)
class DuplicateMark:
    """A duplicate ID the caller records when it commits the delivery (RFC 7352 §3)."""

    id: str
    handle: str
    period: int
    last: bool


@dataclass(slots=True)
class Result:
    """The outcome of one run. `error` is set after a runtime error: then `actions` is the
    fallback implicit keep only, and the caller logs the error (RFC 5228 §2.10.6)."""

    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True
    error: str | None = None
    duplicates: list[DuplicateMark] = field(default_factory=list)

    def folders(self) -> dict[str, tuple[str, ...]]:
        """Mailbox name → flags for every place the message is stored (Keep is INBOX)."""
        out: dict[str, tuple[str, ...]] = {}
        for action in self.actions:
            if isinstance(action, Keep):
                out[INBOX] = action.flags
            elif isinstance(action, FileInto):
                out[action.mailbox] = action.flags
        return out


def is_sending(action: Action) -> bool:
    """True for the actions that send mail (through the submission relay)."""
    return isinstance(action, Redirect | Vacation)


def is_inbox(name: str) -> bool:
    """INBOX is case-insensitive (RFC 3501 §5.1)."""
    return name.upper() == INBOX


def merge_flags(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """Union of two flag lists in order, comparing case-insensitively (RFC 5232 §3)."""
    seen = {f.lower() for f in first}
    out = list(first)
    for flag in second:
        if flag.lower() not in seen:
            seen.add(flag.lower())
            out.append(flag)
    return tuple(out)
