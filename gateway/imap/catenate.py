"""CATENATE (RFC 4469): an APPEND whose message is joined from literal text and parts of
messages the user can already read, named by IMAP URLs (RFC 5092).

Only URLs naming this server's own mailboxes for the logged-in user are accepted:
``/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]``, optionally with an
``imap://user@host`` prefix (the user must be the session's own; URLAUTH is not offered),
or the relative form ``/;UID=n...`` / ``;UID=n...`` meaning the selected mailbox (§5:
relative to the selected mailbox's URL). The mailbox name is the %-escaped UTF-8 name
(RFC 5092 §3.2). Anything that cannot be resolved is ``NO [BADURL "url"]`` (RFC 4469 §5),
never a partial message.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING

from gateway.imap.command import CatenatePart
from gateway.imap.handler import BadCommand, Refused
from gateway.message.sections import section
from gateway.store.interfaces import MailboxNotFound

if TYPE_CHECKING:
    from gateway.imap.handler import Session

_URL_RE = re.compile(
    r"(?:imap://(?:(?P<user>[^@/;]+)(?:;[^@/]*)?@)?[^/]+)?"
    r"(?:/(?P<mailbox>[^;/]*)(?:;UIDVALIDITY=(?P<uidvalidity>[0-9]+))?)?"
    r"/?;UID=(?P<uid>[0-9]+)"
    r"(?:/;SECTION=(?P<section>[^/;]+))?"
    r"(?:/;PARTIAL=(?P<origin>[0-9]+)(?:\.(?P<length>[0-9]+))?)?",
    re.IGNORECASE,
)
_SECTION_RE = re.compile(
    r"(?P<part>[0-9]+(?:\.[0-9]+)*)?(?:(?<=[0-9])\.)?(?P<kind>HEADER|TEXT|MIME)?", re.IGNORECASE
)


_NOT_URL_RESP_TEXT = re.compile(rb"[^\x01-\x09\x0b\x0c\x0e-\x5c\x5e-\x7f]")


def _bad(url: bytes) -> Refused:
    """``NO [BADURL url]``: RFC 4469 §6 ``url-resp-text`` is bare text without ``]``, CR or
    LF (not a quoted string), so any such octet is dropped from the echo."""
    text = _NOT_URL_RESP_TEXT.sub(b"", url).decode("ascii")
    return Refused("CATENATE URL cannot be resolved", f"BADURL {text}")


def _section(url: bytes, text: str | None) -> tuple[tuple[int, ...], str] | None:
    if text is None:
        return None
    m = _SECTION_RE.fullmatch(urllib.parse.unquote(text))
    if m is None or not (m.group("part") or m.group("kind")):
        raise _bad(url)
    part = tuple(int(p) for p in m.group("part").split(".")) if m.group("part") else ()
    if any(p == 0 for p in part):
        raise _bad(url)
    kind = (m.group("kind") or "").upper()
    if kind == "MIME" and not part:
        raise _bad(url)
    return part, kind


def resolve_url(session: Session, url: bytes) -> bytes:
    """The bytes an IMAP URL names (RFC 4469 §5, RFC 5092), or ``NO [BADURL]``."""
    try:
        text = url.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(url) from None
    m = _URL_RE.fullmatch(text)
    user = session.user
    if m is None or user is None:
        raise _bad(url)
    if m.group("user") is not None and urllib.parse.unquote(m.group("user")) != user:
        raise _bad(url)  # another user's URL would need URLAUTH (RFC 4467), not offered
    store = session.store
    if m.group("mailbox") is None:
        view = session.selected
        if view is None:
            raise _bad(url)
        mailbox = view.mailbox
    else:
        name = urllib.parse.unquote(m.group("mailbox"), errors="strict")
        try:
            mailbox = store.get_mailbox(user, session.mailbox_name(name.encode("utf-8")))
        except (MailboxNotFound, Refused, BadCommand, UnicodeError):
            raise _bad(url) from None
    if m.group("uidvalidity") is not None and int(m.group("uidvalidity")) != mailbox.uidvalidity:
        raise _bad(url)
    uid = int(m.group("uid"))
    try:
        raw = store.message_bytes(mailbox.id, uid)
    except (KeyError, MailboxNotFound):
        raise _bad(url) from None
    wanted = _section(url, m.group("section"))
    if wanted is not None:
        infos = store.message_info(mailbox.id, [uid])
        if not infos:
            raise _bad(url)
        part, kind = wanted
        raw = section(raw, infos[0].parts, part, kind)
    if m.group("origin") is not None:
        origin = int(m.group("origin"))
        length = m.group("length")
        raw = raw[origin:] if length is None else raw[origin : origin + int(length)]
    return raw


def assemble(session: Session, parts: tuple[CatenatePart, ...]) -> bytes:
    """The message a CATENATE list describes: its parts joined in order (RFC 4469 §5)."""
    out: list[bytes] = []
    for part in parts:
        if part.kind == "URL":
            out.append(resolve_url(session, bytes(part.data)))
        else:
            out.append(bytes(part.data))
    return b"".join(out)
