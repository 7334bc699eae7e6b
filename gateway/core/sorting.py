"""The SORT program and the THREAD facts: what SORT/THREAD ask of a store (RFC 5256, RFC 5957).

Like :mod:`gateway.core.criteria`, it sits between the IMAP parser that builds it and the
store that answers it, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

SORT_KEYS = frozenset(("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO"))
"""RFC 5256 §3 sort keys."""

DISPLAY_SORT_KEYS = frozenset(("DISPLAYFROM", "DISPLAYTO"))
"""RFC 5957 §3 (SORT=DISPLAY) sort keys."""


@dataclass(frozen=True)
class SortCriterion:
    """One ``[REVERSE] key`` of a SORT program; ``key`` is upper-case."""

    key: str
    reverse: bool = False


@dataclass(frozen=True)
class ThreadFacts:
    """What THREAD (RFC 5256 §3) needs of one message.

    ``sent`` is the RFC 5256 §2.2 sent date in epoch seconds (INTERNALDATE when the
    Date: header is missing or unusable); ``subject`` the case-mapped base subject;
    ``message_id`` and ``references`` msg-ids without angle brackets.
    """

    uid: int
    sent: int
    subject: str
    reply_or_forward: bool
    message_id: str | None
    references: tuple[str, ...]
