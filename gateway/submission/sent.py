"""The Sent copy the server files for each submitted message, and the rule that keeps
one copy when the client APPENDs its own as well (issue 15; Gmail behaves the same).

Pure: the lead's glue stores the copy in the user's ``\\Sent`` mailbox (RFC 6154) and
asks :class:`SentDedup` before filing any copy, the server's or an APPEND to ``\\Sent``.

Two copies are "the same message" when they have the same Message-ID and the same
recipients (the union of To, Cc and Bcc, compared as addresses, case-insensitively)
and the second arrives within ``window`` seconds of the first. A message without a
Message-ID is never deduplicated (the server adds one to every submission, RFC 6409
§8.3, so this only concerns foreign APPENDs). The recipients are part of the key because
some clients reuse a Message-ID when a draft is sent again to other people.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.submission import headers
from gateway.submission.policy import header_addresses, normalize_address

SENT_FLAGS: tuple[str, ...] = ("\\Seen",)
"""Flags of the Sent copy: the user wrote it, so it is read."""

DEDUP_WINDOW = 600.0
"""Seconds within which a second copy counts as the client's own (Thunderbird and iOS
APPEND right after sending; a phone that was offline may take minutes)."""

MAX_DEDUP_ENTRIES = 10_000
"""Copies remembered at once (least recently filed forgotten first)."""


@dataclass(frozen=True)
class SentCopy:
    """What to file in ``\\Sent``: the message as submitted, Bcc kept."""

    raw: bytes
    flags: tuple[str, ...] = SENT_FLAGS


def sent_copy(submitted: bytes) -> SentCopy:
    """The Sent copy of a submission (``Submission.raw``: Message-ID/Date completed,
    Bcc still there, so the user can see whom they blind-copied)."""
    return SentCopy(raw=submitted)


DedupKey = tuple[str, frozenset[str]]


def dedup_key(raw: bytes) -> DedupKey | None:
    """(Message-ID, recipients) of a message, or None when it has no Message-ID."""
    message_id = headers.message_id(raw)
    if not message_id:
        return None
    recipients = header_addresses(
        [v for name in ("To", "Cc", "Bcc") for v in headers.values(raw, name)]
    )
    return message_id.strip(), frozenset(normalize_address(a) for a in recipients)


class SentDedup:
    """Recently filed Sent copies per user, in memory (a restart forgets the window,
    which at worst leaves the two copies that clients make today). Safe to use from
    several threads (with a PostgreSQL store, submissions and IMAP APPENDs file their
    copies on the store's threads)."""

    def __init__(self, window: float = DEDUP_WINDOW, max_entries: int = MAX_DEDUP_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, DedupKey], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def recent(self, user: str, raw: bytes, now: float) -> Any | None:
        """The reference passed to :meth:`remember` for the same message filed for
        ``user`` within the window (so the caller files nothing and, for an APPEND,
        answers with that copy's UID), else None."""
        key = dedup_key(raw)
        if key is None:
            return None
        with self._lock:
            entry = self._seen.get((user, key))
            if entry is None:
                return None
            when, ref = entry
            if now - when > self.window:
                del self._seen[(user, key)]
                return None
            return ref

    def remember(self, user: str, raw: bytes, ref: Any, now: float) -> None:
        """A copy was filed for ``user``; ``ref`` is whatever the caller wants back
        (e.g. ``(mailbox_id, uid)``)."""
        key = dedup_key(raw)
        if key is None:
            return
        with self._lock:
            self._seen[(user, key)] = (now, ref)
            self._seen.move_to_end((user, key))
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
