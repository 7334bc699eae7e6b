"""IMAP reply text: the wire form of a :class:`Reply` and the store's errors as replies.

RFC 3501 §7.1 (status responses) and RFC 5530 (response codes). Used by
:meth:`gateway.imap.errors.ErrorReplies.reply_for_error`, the one place exceptions become
tagged responses (STYLE.md habit 4).
"""

from __future__ import annotations

import re
from functools import lru_cache

from gateway.imap.handler import Reply
from gateway.imap.states import TRYCREATE_COMMANDS
from gateway.store.interfaces import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageTooLarge,
    OverQuota,
    SearchTooComplex,
)

MAX_RESPONSE_TEXT = 200
"""Human-readable response text longer than this is shortened (it may echo client input)."""


_NOT_PRINTABLE = re.compile(r"[^ -~]")
_NOT_CODE = re.compile(r"[^ -~]|[\[\]]")
"""What :func:`clean_text` and :func:`clean_code` replace by ``?``, one regex pass each
(the LOGIN reply's CAPABILITY code is ~200 characters: a per-character loop cost about
0.3 ms per login in the reconnect storm's profile, issue 19)."""


def clean_text(text: str) -> str:
    """Response text: printable ASCII only, bounded (it may echo client input)."""
    cleaned = _NOT_PRINTABLE.sub("?", text)
    if len(cleaned) > MAX_RESPONSE_TEXT:
        cleaned = cleaned[: MAX_RESPONSE_TEXT - 3] + "..."
    return cleaned or "done"


def clean_code(code: str) -> str:
    """A response code: printable ASCII without brackets (it may echo client input)."""
    return _NOT_CODE.sub("?", code)


def tagged(tag: str, reply: Reply) -> bytes:
    """``tag STATUS [code] text`` CRLF (RFC 3501 §7.1)."""
    status, code, text = reply.status, reply.code, reply.text
    if len(text) > MAX_RESPONSE_TEXT or (code is not None and len(code) > MAX_RESPONSE_TEXT):
        return tag.encode("ascii") + _completion.__wrapped__(status, code, text)
    return tag.encode("ascii") + _completion(status, code, text)


@lru_cache(maxsize=256)
def _completion(status: str, code: str | None, text: str) -> bytes:
    """A tagged reply after its tag, cleaned and encoded once per distinct reply (most
    are a few constant texts: "FETCH completed"), not once per command (issue 19); a
    long text (maybe echoing client input) is not kept."""
    shown = f"[{clean_code(code)}] " if code else ""
    return f" {status} {shown}{clean_text(text)}\r\n".encode("ascii")


def store_error_reply(exc: Exception, command: str) -> Reply | None:
    """The store's errors → response codes (RFC 5530, RFC 3501 §6.3.11)."""
    if isinstance(exc, SearchTooComplex):
        # The store's bound on a search program (RFC 5530 LIMIT), not a server bug.
        return Reply("NO", "Search program too complex", "LIMIT")
    if isinstance(exc, MailboxNotFound):
        if command in TRYCREATE_COMMANDS:
            return Reply("NO", "Mailbox does not exist", "TRYCREATE")
        return Reply("NO", "Mailbox does not exist", "NONEXISTENT")
    if isinstance(exc, MailboxExists):
        return Reply("NO", "Mailbox already exists", "ALREADYEXISTS")
    if isinstance(exc, InvalidMailboxName):
        return Reply("NO", f"Invalid mailbox name: {exc.reason}", "CANNOT")
    if isinstance(exc, MailboxNotAllowed):
        return Reply("NO", "Operation not allowed on this mailbox", "CANNOT")
    if isinstance(exc, OverQuota):
        return Reply("NO", "Quota exceeded", "OVERQUOTA")
    if isinstance(exc, MessageTooLarge):
        return Reply("NO", "Message too large", "TOOBIG")
    return None
