"""Object identifiers of RFC 8474 (OBJECTID) and the save date of RFC 8514, as every
backend derives them, so the SQLite and memory stores agree to the character.

* MAILBOXID (RFC 8474 §4) is the mailbox's store id: ``AUTOINCREMENT`` in SQLite (and a
  counter in the memory store), so it survives RENAME and is never given to another
  mailbox, which is what §4 asks.
* EMAILID (§5.1) is derived from the SHA-256 of the message bytes, which the store keeps
  already: a COPY or MOVE shares the message row and so the id; identical bytes delivered
  twice get one id, which §5.1 permits ("the same EMAILID ... for messages with the same
  immutable content"). 96 bits make an accidental collision negligible.
* THREADID (§5.2) is derived from immutable content too, so it is stable across sessions
  and backends without any stored assignment: the thread's root is the first msg-id of
  References (RFC 5322 §3.6.4: each reply copies its parent's References and appends the
  parent's Message-ID, so the first one names the message that started the thread), or
  the In-Reply-To parent when there is no References, or the message's own Message-ID
  when it replies to nothing; the id is ``T`` and 96 bits of the SHA-256 of that msg-id.
  A message with none of these is a thread of its own, ``T`` plus its EMAILID digits.
  Messages with the same EMAILID thus share a THREADID, as §5.2 requires; a reply that
  kept only In-Reply-To below the first level starts a new thread id (the ids never
  change once given, so a thread cannot be merged later), which THREAD=REFERENCES, not
  bound by stability, may still join.
* The save date (RFC 8514 §3) is the epoch second a row entered its mailbox; its day for
  SAVEDBEFORE/SAVEDON/SAVEDSINCE is counted in UTC, the same in both backends.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Sequence

EMAILID_HEX = 24
"""Hex digits of the SHA-256 kept in an EMAILID (96 bits)."""

_EMAILID_RE = re.compile(f"M[0-9a-f]{{{EMAILID_HEX}}}")

EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
"""``date.toordinal()`` of the epoch's day: a UTC day number is ``epoch // 86400`` plus this."""


def mailbox_id_text(mailbox_id: int) -> str:
    """The MAILBOXID of a store mailbox id (RFC 8474 objectid: letters, digits, ``-_``)."""
    return f"F{mailbox_id}"


def email_id(digest: bytes) -> str:
    """The EMAILID of a message whose SHA-256 digest is ``digest``."""
    return "M" + digest.hex()[:EMAILID_HEX]


def email_id_of(raw: bytes) -> str:
    """The EMAILID of these message bytes."""
    return email_id(hashlib.sha256(raw).digest())


def thread_id(message_id: str | None, references: Sequence[str], emailid: str | None) -> str | None:
    """The THREADID of a message from its THREAD facts (msg-ids without angle brackets,
    :class:`gateway.core.sorting.ThreadFacts`) and EMAILID; None when nothing is known."""
    root = references[0] if references else message_id
    if root:
        return "T" + hashlib.sha256(b"thread:" + root.encode()).hexdigest()[:EMAILID_HEX]
    if emailid:
        return "T" + emailid[1:]
    return None


def email_id_prefix(value: str) -> bytes | None:
    """The digest prefix an EMAILID stands for, or None if ``value`` is not one of ours
    (a search for it matches nothing)."""
    if _EMAILID_RE.fullmatch(value) is None:
        return None
    return bytes.fromhex(value[1:])


def save_day(epoch: int) -> datetime.date:
    """The UTC day of a save date, for RFC 8514 §4.2 comparisons."""
    return datetime.date.fromordinal(epoch // 86400 + EPOCH_ORDINAL)
