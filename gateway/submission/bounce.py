"""Delivery status notifications for messages the relay could not deliver (RFC 3464).

Pure: :func:`bounce_message` returns the octets of a ``multipart/report`` (RFC 6522)
with three parts: a human explanation, a ``message/delivery-status`` part with one
per-recipient block each, and the original message's header (``text/rfc822-headers``,
so a large attachment is not sent back). The lead files it in the sender's INBOX; it is
never relayed, so it has no envelope and needs no loop protection beyond
``Auto-Submitted: auto-replied`` (RFC 3834) for the user's own filters.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.submission import headers

MAX_DIAGNOSTIC = 400
"""Characters of an upstream's reply kept in a diagnostic (replies are server input)."""

_UNSAFE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class RecipientFailure:
    """Why one recipient did not get the message."""

    recipient: str
    status: str
    """RFC 3463 code, e.g. "5.1.1"; "4.4.7" for an expired message (RFC 3463 §3.5)."""
    diagnostic: str
    """The upstream's reply ("550 5.1.1 <bob@x>: unknown user") or popgate's reason."""
    action: str = "failed"


def _ascii(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    return _UNSAFE.sub("?", text)[:limit]


def bounce_message(
    *,
    sender: str,
    failures: Sequence[RecipientFailure],
    original: bytes,
    reporting_host: str,
    remote_host: str | None,
    arrival: float,
    now: float,
    expired: bool = False,
) -> bytes:
    """The report for ``sender`` about ``failures`` of ``original`` (the message as
    relayed, or as submitted)."""
    if not failures:
        raise ValueError("a bounce needs at least one failed recipient")
    digest = hashlib.sha256(original + repr((failures, now)).encode()).hexdigest()[:24]
    boundary = f"=_popgate_dsn_{digest}"
    host = _ascii(reporting_host, 255)
    subject_orig = next(iter(headers.values(original, "Subject")), "")
    why = (
        "could not be delivered before its time in the queue ran out"
        if expired
        else "could not be delivered"
    )
    human = [
        "This is the mail system at popgate.",
        "",
        f"Your message{f' {_ascii(subject_orig, 120)!r}' if subject_orig else ''} "
        f"{why} to the following recipient(s):",
        "",
    ]
    for failure in failures:
        human.append(f"  <{_ascii(failure.recipient, 320)}>: {_ascii(failure.diagnostic)}")
    human += [
        "",
        "Nobody else was told about this. The message's header is attached; the",
        "full message is in your Sent folder if you want to send it again.",
    ]
    status = [
        f"Reporting-MTA: dns; {host}",
        f"Arrival-Date: {email.utils.formatdate(arrival)}",
        "",
    ]
    for i, failure in enumerate(failures):
        status += [
            f"Final-Recipient: rfc822; {_ascii(failure.recipient, 320)}",
            f"Action: {failure.action}",
            f"Status: {failure.status}",
        ]
        if remote_host:
            status.append(f"Remote-MTA: dns; {_ascii(remote_host, 255)}")
        kind = "smtp" if failure.diagnostic[:3].isdigit() else "x-popgate"
        status.append(f"Diagnostic-Code: {kind}; {_ascii(failure.diagnostic)}")
        status.append(f"Last-Attempt-Date: {email.utils.formatdate(now)}")
        if i < len(failures) - 1:
            status.append("")
    original_header, _ = headers.split_message(original)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_ascii(sender, 320)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{digest}.dsn@{host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message header",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n"
    return ("\r\n".join(head) + "\r\n").encode("ascii") + original_header + tail.encode("ascii")
