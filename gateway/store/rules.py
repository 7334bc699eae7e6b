"""The rules every store backend applies the same way: mailbox names, flags, message checks,
INTERNALDATE, the folders a new user gets, and the numeric limits of UIDs.

Backends import these instead of each writing its own, so SQLite, the memory store and
the PostgreSQL store cannot drift apart; the contract suite
(tests/test_store_contract.py) proves they do not. The functions are pure: they raise
the typed errors of :mod:`gateway.store.errors` (or :class:`ValueError`/:class:`TypeError`
for values no caller should pass) and touch no storage.
"""

from __future__ import annotations

import datetime
import mmap
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from gateway.core.flags import RECENT, SETTABLE_FLAGS, canonical_flag
from gateway.store.errors import InvalidMailboxName, MailboxNotAllowed, MessageTooLarge
from gateway.store.interfaces import DELIMITER, INBOX, MessageInfo

MAX_MAILBOX_NAME_LENGTH = 512
"""Longest mailbox name, in characters."""

MAX_MAILBOX_DEPTH = 32
"""Most hierarchy levels in one mailbox name."""

MAX_UID = 2**32 - 1
"""UIDs and UIDVALIDITY are 32-bit unsigned (RFC 3501 §2.3.1.1, nz-number)."""

DEFAULT_FOLDERS: tuple[tuple[str, str], ...] = (
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
"""Folders every new user gets, with their RFC 6154 special-use attribute."""

SEEN_KEY = "\\seen"
"""\\Seen as a key of :func:`flag_map` (lower case): private per viewer when shared."""

_ATOM_SPECIALS = frozenset('(){ %*"\\]')

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories no mailbox name may hold: controls (C0, DEL, C1), format and bidi
controls (U+202E shows ``evil\u202etxt.exe`` as ``evilexe.txt``; U+200E/F, U+2066–2069,
U+061C, U+FEFF, ... are invisible), lone surrogates (no character at all) and the line
and paragraph separators U+2028/2029. A name is shown to users by every client: what it
displays must be what it is."""

JOINERS = frozenset("\u200c\u200d")
"""ZWNJ and ZWJ: format characters (Cf) that reorder and hide nothing, and that emoji
sequences and words in Persian and Indic scripts need, so names may hold them."""


def leading_uids(infos: Sequence[MessageInfo], budget: int) -> list[int]:
    """The UIDs of the first ``infos`` whose sizes add up to at most ``budget`` octets,
    always at least the first (a message larger than the budget is still read whole):
    which bodies one read brings, so that FETCH holds a few MB of them at a time while
    sparing a query per message."""
    out: list[int] = []
    total = 0
    for info in infos:
        total += info.size
        if out and total > budget:
            break
        out.append(info.uid)
    return out


def check_message(raw: bytes | mmap.mmap, limit: int) -> None:
    """What every backend checks before storing a message: bytes (or a read-only map of
    a spooled file, see :class:`~gateway.store.interfaces.NewMessage`), not over ``limit``."""
    if not isinstance(raw, bytes | mmap.mmap):
        raise TypeError("raw message must be bytes")
    if len(raw) > limit:
        raise MessageTooLarge(f"message of {len(raw)} bytes exceeds the limit of {limit}")


def stored_internaldate(
    when: datetime.datetime | None, now: datetime.datetime
) -> datetime.datetime:
    """INTERNALDATE as every backend keeps it: aware (a naive value is taken as UTC),
    whole seconds, in its own offset rounded to minutes; ``now`` when not given."""
    if when is None:
        when = now
    elif when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset()
    assert offset is not None
    zone = datetime.timezone(datetime.timedelta(minutes=int(offset.total_seconds() // 60)))
    return when.replace(microsecond=0).astimezone(zone)


def normalise_name(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), and so is it as the first level of a
    hierarchical name: "inbox/x" is "INBOX/x", never a second, shadow inbox."""
    head, sep, rest = name.partition(DELIMITER)
    if head != INBOX and head.upper() == INBOX:
        return INBOX + sep + rest
    return name


def check_mailbox_name(name: str) -> None:
    """Raise :class:`MailboxNotAllowed` unless ``name`` can name a mailbox here.

    Refused (as :class:`InvalidMailboxName`, a MailboxNotAllowed): empty names or levels
    ("a//b"), a leading or trailing delimiter, characters :func:`check_name_characters`
    refuses, more than :data:`MAX_MAILBOX_NAME_LENGTH` characters or
    :data:`MAX_MAILBOX_DEPTH` levels.
    """
    if not name:
        raise InvalidMailboxName("empty name")
    if len(name) > MAX_MAILBOX_NAME_LENGTH:
        raise InvalidMailboxName(f"longer than {MAX_MAILBOX_NAME_LENGTH} characters")
    check_name_characters(name)
    levels = name.split(DELIMITER)
    if len(levels) > MAX_MAILBOX_DEPTH:
        raise InvalidMailboxName(f"deeper than {MAX_MAILBOX_DEPTH} levels")
    if any(level == "" for level in levels):
        raise InvalidMailboxName("empty hierarchy level")


def check_name_characters(name: str) -> None:
    """Raise :class:`InvalidMailboxName` if ``name`` holds a character of
    :data:`REFUSED_CATEGORIES` other than the :data:`JOINERS`: the one rule for the
    characters of every name a client can make exist (mailboxes, subscriptions)."""
    if name.isascii():
        refused = any(c < " " or c == "\x7f" for c in name)
    else:
        refused = any(
            unicodedata.category(c) in REFUSED_CATEGORIES and c not in JOINERS for c in name
        )
    if refused:
        raise InvalidMailboxName("control or format character")


def parent_names(name: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def check_flag(flag: str) -> None:
    """A flag must be an IMAP atom, optionally after one backslash (RFC 3501 §9 flag)."""
    if not isinstance(flag, str):
        raise TypeError(f"flag must be str, not {type(flag).__name__}")
    body = flag[1:] if flag.startswith("\\") else flag
    if not body or any(c in _ATOM_SPECIALS or not ("\x21" <= c <= "\x7e") for c in body):
        raise ValueError(f"not a valid IMAP flag: {flag!r}")


def flag_map(flags: Iterable[str]) -> dict[str, str]:
    """Validated flags keyed by their lower-case form, \\Recent dropped (not settable)."""
    if isinstance(flags, str):
        raise TypeError("flags must be an iterable of str, not one str")
    out: dict[str, str] = {}
    for flag in flags:
        check_flag(flag)
        flag = canonical_flag(flag)
        if flag != RECENT:
            out.setdefault(flag.lower(), flag)
    return out


def filing_flags(flags: Iterable[str]) -> dict[str, str]:
    """Flags a routed delivery sets (Sieve imap4flags, RFC 5232 §3): like :func:`flag_map`,
    but a string that is not a valid IMAP flag is dropped instead of refused, since a
    script may set any string and the message must still be filed."""
    out: dict[str, str] = {}
    for flag in flags:
        try:
            out.update(flag_map([flag]))
        except (ValueError, TypeError):
            continue
    for key, value in list(out.items()):
        if value.startswith("\\") and value not in SETTABLE_FLAGS:
            del out[key]  # an unknown \Flag is not settable (RFC 3501 §2.3.2)
    return out


def filing_name(mailbox: str) -> str | None:
    """The normalised mailbox name a routed delivery's target means, or None when the
    name cannot name a mailbox (the target then goes to the default mailbox)."""
    name = normalise_name(mailbox)
    if name == INBOX:
        return name
    try:
        check_mailbox_name(name)
    except MailboxNotAllowed:
        return None
    return name


Box = TypeVar("Box")


def filing_plan(
    targets: Iterable[Any],
    box: Callable[[str, bool], Box | None],
    default: str,
    ident: Callable[[Box], int],
) -> dict[int, tuple[Box, dict[str, str]]]:
    """Where a routed delivery goes, every backend alike: each target's mailbox
    (``box(name, create)``, None when it cannot be used: then ``default``, created if
    need be) with the flags to set, one entry per mailbox (keyed by ``ident``) whose
    flags are the union of the targets naming it (RFC 5228 §4.2: a message is filed
    into a mailbox once, however many ``fileinto`` name it)."""
    wanted: dict[int, tuple[Box, dict[str, str]]] = {}
    for target in targets:
        name = filing_name(target.mailbox)
        found = box(name, target.create) if name is not None else None
        if found is None:
            found = box(default, True)
        assert found is not None
        flags = filing_flags(target.flags)
        key = ident(found)
        if key in wanted:
            flags = {**flags, **wanted[key][1]}
        wanted[key] = (found, flags)
    return wanted
