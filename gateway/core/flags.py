"""Message flags and mailbox special-use attributes: their canonical spellings, defined once.

IMAP compares system flags and attributes case-insensitively (RFC 3501 §2.3.2, RFC 6154
§2) but every layer stores and shows one spelling; the parser, the session, the handlers
and the store all take theirs from here.
"""

from __future__ import annotations

ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
SEEN = "\\Seen"
DRAFT = "\\Draft"
RECENT = "\\Recent"
"""RFC 3501 §2.3.2: set by the server only, and per session (a client cannot store it)."""

SETTABLE_FLAGS: tuple[str, ...] = (ANSWERED, FLAGGED, DELETED, SEEN, DRAFT)
"""The system flags a client may set, in the RFC's order: what FLAGS and PERMANENTFLAGS
announce (RFC 3501 §7.2.6, §7.1)."""

SYSTEM_FLAGS: tuple[str, ...] = (*SETTABLE_FLAGS, RECENT)
"""Every RFC 3501 §2.3.2 system flag, in its canonical spelling."""

_CANONICAL_FLAGS = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def canonical_flag(flag: str) -> str:
    """System flags in their canonical case (``\\SEEN`` → ``\\Seen``); keywords and
    unknown ``\\Name`` flags as given (RFC 3501 §2.3.2: keywords keep their case)."""
    if flag.startswith("\\"):
        return _CANONICAL_FLAGS.get(flag.lower(), flag)
    return flag


def is_system_flag(flag: str) -> bool:
    """Whether ``flag`` names a system flag, in any case."""
    return flag.lower() in _CANONICAL_FLAGS


SPECIAL_USES: tuple[str, ...] = (
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Junk",
    "\\Sent",
    "\\Trash",
    "\\Important",
)
"""Mailbox special-use attributes: RFC 6154 §2 plus RFC 8457 ``\\Important``."""

SENT_USE = "\\Sent"
"""The special use of the mailbox holding sent mail (RFC 6154 §2): where the submission
relay files the Sent copy, and where an APPEND of the same message is kept once."""

VIRTUAL_SPECIAL_USES: frozenset[str] = frozenset(("\\All", "\\Flagged"))
"""Special uses that name virtual mailboxes (every message, every flagged message), which
popgate does not have: CREATE refuses them with ``NO [USEATTR]`` (RFC 6154 §5.3)."""

_CANONICAL_USES = {use.lower(): use for use in SPECIAL_USES}


def canonical_special_use(attribute: str) -> str:
    """A special-use attribute in its canonical case; unknown ones as given."""
    return _CANONICAL_USES.get(attribute.lower(), attribute)
