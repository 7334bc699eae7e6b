"""Object identifiers of RFC 8474 (OBJECTID) and the save date of RFC 8514, as every
backend derives them, so the SQLite and memory stores agree to the character.

* MAILBOXID (RFC 8474 §4) is the mailbox's store id: ``AUTOINCREMENT`` in SQLite (and a
  counter in the memory store), so it survives RENAME and is never given to another
  mailbox, which is what §4 asks.
* EMAILID (§5.1) is derived from the SHA-256 of the message bytes, which the store keeps
  already: a COPY or MOVE shares the message row and so the id; identical bytes delivered
  twice get one id, which §5.1 permits ("the same EMAILID ... for messages with the same
  immutable content"). 96 bits make an accidental collision negligible.
* THREADID (§5.2) is NIL: popgate keeps no persistent thread assignment (the SORT/THREAD
  work computes threads per command), and §5.2 allows NIL from a server that cannot give
  a stable thread id.
* The save date (RFC 8514 §3) is the epoch second a row entered its mailbox; its day for
  SAVEDBEFORE/SAVEDON/SAVEDSINCE is counted in UTC, the same in both backends.
"""

from __future__ import annotations

import datetime
import hashlib
import re

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


def email_id_prefix(value: str) -> bytes | None:
    """The digest prefix an EMAILID stands for, or None if ``value`` is not one of ours
    (a search for it matches nothing)."""
    if _EMAILID_RE.fullmatch(value) is None:
        return None
    return bytes.fromhex(value[1:])


def save_day(epoch: int) -> datetime.date:
    """The UTC day of a save date, for RFC 8514 §4.2 comparisons."""
    return datetime.date.fromordinal(epoch // 86400 + EPOCH_ORDINAL)
