"""The one builder of small RFC 5322 messages for tests, bench and demo.

Realistic mail in bulk comes from :mod:`gateway.testing.samplemail`; this builds the one
short message a test reasons about byte for byte, with exactly the header fields it asks
for. Every field can be left out (``None``), so the same builder serves a bare
``Subject:``-only message and a full MIME one.
"""

from __future__ import annotations

import base64

DATE = "Mon, 7 Feb 1994 21:52:25 -0800"
"""The default Date: field (RFC 5322 §3.3), the example date of RFC 3501."""

MESSAGE_ID_FROM_SUBJECT = "<{subject}@example.com>"
"""The default Message-ID template; ``{subject}`` is replaced by the subject."""

MIME_HEADERS = (
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
)
"""What ``mime=True`` adds (RFC 2045 §4, §5, §6): an 8-bit UTF-8 text/plain body."""


def encoded_word(text: str) -> str:
    """``text`` as an RFC 2047 §2 encoded-word when it is not plain ASCII."""
    if text.isascii():
        return text
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def message(
    subject: str | None = "Hello",
    body: str | bytes = "Hi there.\r\n",
    sender: str | None = "bob@example.com",
    *,
    to: str | None = "alice@example.com",
    cc: str | None = None,
    date: str | None = DATE,
    message_id: str | None = MESSAGE_ID_FROM_SUBJECT,
    mime: bool = False,
) -> bytes:
    """A message with, in this order, From, To, Cc, Subject, Date, Message-ID and the MIME
    fields, each left out when ``None`` (``mime`` when False); then an empty line and
    ``body`` verbatim (its line endings are the caller's). A non-ASCII subject is sent
    as an RFC 2047 encoded-word."""
    fields = []
    if sender is not None:
        fields.append(f"From: {sender}")
    if to is not None:
        fields.append(f"To: {to}")
    if cc is not None:
        fields.append(f"Cc: {cc}")
    if subject is not None:
        fields.append(f"Subject: {encoded_word(subject)}")
    if date is not None:
        fields.append(f"Date: {date}")
    if message_id is not None:
        fields.append("Message-ID: " + message_id.replace("{subject}", subject or ""))
    if mime:
        fields.extend(MIME_HEADERS)
    head = "".join(field + "\r\n" for field in fields).encode() + b"\r\n"
    return head + (body.encode() if isinstance(body, str) else body)
