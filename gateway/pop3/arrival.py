"""When a fetched message reached its provider: the INTERNALDATE popgate gives POP3 mail.

A first import of a years-old POP3 mailbox must not show every message as "received
today" in clients that sort by arrival (INTERNALDATE, RFC 3501 §2.3.3). The provider's
own ``Received:`` header, the topmost one (RFC 5321 §4.4: each hop prepends its own),
records when the provider accepted the message. Only the header block is read, and a
date that is unparseable or later than the fetch itself is ignored in favour of the
fetch time, so a forged or skewed header can at worst move a message back in time.
"""

from __future__ import annotations

import datetime
import email.utils
import re

# Only this much of the message is searched for the header block: Received: headers
# sit at the top, and a bound keeps a pathological header from costing more.
MAX_HEADER_SCAN = 64 * 1024

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_RECEIVED = re.compile(rb"^received:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def arrival_time(raw: bytes, fetched_at: datetime.datetime) -> datetime.datetime:
    """The date after the last ``;`` of the topmost Received: header, or ``fetched_at``."""
    head = raw[:MAX_HEADER_SCAN]
    end = _HEADER_END.search(head)
    if end is not None:
        head = head[: end.start()]
    match = _RECEIVED.search(head)
    if match is None:
        return fetched_at
    value = match.group(1).decode("ascii", "replace")
    if ";" not in value:
        return fetched_at
    text = " ".join(value.rsplit(";", 1)[1].split())
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return fetched_at
    if when is None or when.tzinfo is None or when > fetched_at:
        return fetched_at
    return when
