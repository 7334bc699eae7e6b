"""Sieve actions that send mail at ingest (issue 16): ``redirect`` (RFC 5228 §4.2, ``:copy``
RFC 3894) and ``vacation`` (RFC 5230) turned into outbound queue items for the submission
relay (issue 15), or into nothing, with the reason logged.

Pure over what it is given: the run's :class:`~gateway.sieve.Result`, the delivery, its
envelope, the response record (:class:`~gateway.access.filtering.StoreEnvironment`) and a
:class:`Sending` the app implements from the config (which upstream sends for an owner,
the owner's addresses, the per-user hourly cap shared with the submission server).
:class:`~gateway.access.filtering.SieveDelivery` puts the result in the
:class:`~gateway.store.interfaces.Routed` it commits: the queue rows are written in the
SAME store transaction as the ledger row (the queue lives in the store's file, schema
v6), so a fetched message sends its redirect or reply exactly once, whatever crashes.

Envelopes (RFC 5230 §5; RFC 5228 §4.2):

- vacation: ``MAIL FROM:<>`` (the null reverse-path, so no auto-reply or bounce answers
  it), ``RCPT TO`` the message's envelope sender (its ``Return-Path``).
- redirect: ``MAIL FROM`` is the owner's own address on the sending upstream (the
  upstream address that received the message when it is one of them), not the original
  sender: an authenticated provider submission server refuses or rewrites a foreign
  envelope sender (and SPF would fail at the recipient), and bounces of the redirected
  copy then reach the person who asked for it. ``RCPT TO`` is the redirect address.

Never reply (RFC 5230 §4.5, §4.6; RFC 3834 §2): with no envelope sender, to our own
addresses, to mailer-daemon/list-robot addresses, to mail carrying ``Auto-Submitted``
other than ``no``, any ``List-*`` field, ``Precedence: bulk|junk|list`` or
``X-Auto-Response-Suppress: OOF|All``, or when none of the user's addresses (own plus
``:addresses``) is in To/Cc/Bcc/Resent-To/Resent-Cc/Resent-Bcc. A sender gets at most
one reply per ``:days`` per handle: the response record is an RFC 7352-style duplicate
entry with the handle ``:vacation:HANDLE`` and the sender's address as its ID, written
in the delivery's transaction when a reply is queued.

A redirect that cannot be sent (no sending upstream any more, the hourly cap, a loop)
becomes a keep: the message is never lost.
"""

from __future__ import annotations

import email.utils
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header
from typing import TYPE_CHECKING, Protocol

import structlog

from gateway.store.interfaces import Delivery, DuplicateRecord, NewOutbound

if TYPE_CHECKING:
    from gateway.sieve import Redirect, Result, Vacation
    from gateway.sieve.interpreter import Envelope
    from gateway.sieve.message import SieveMessage

# The Sieve modules are imported where a run's actions are sent, not at import: a gateway
# whose owners have no scripts never loads the language (issue 19, start-up).

log = structlog.get_logger(__name__)

VACATION_HANDLE_PREFIX = ":vacation:"
"""Prefix of the response record's handle in the duplicate table (reserved: a script's
own ``duplicate :handle`` should not start with it)."""

LOOP_HEADER = "X-Sieve-Redirected-From"
"""Added to a redirected copy (Pigeonhole's name): a message already carrying it with
the owner's address is not redirected again (RFC 5228 §4.2 asks for loop control)."""

LIST_FIELDS = (
    "list-id", "list-help", "list-subscribe", "list-unsubscribe", "list-post",
    "list-owner", "list-archive",
)  # fmt: skip
"""RFC 2369/2919 fields: a mailing list message is never answered (RFC 5230 §4.6)."""

ROBOT_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo", "postmaster")
ROBOT_PREFIXES = ("owner-",)
ROBOT_SUFFIXES = ("-request", "-owner", "-bounces")
"""Sender local parts of mail robots (RFC 5230 §4.6, as Pigeonhole's list)."""

RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
"""Where the user's address must appear for a reply (RFC 5230 §4.5)."""


@dataclass(frozen=True)
class SendingRoute:
    """The upstream an owner's Sieve mail leaves through, and its own addresses."""

    name: str
    addresses: tuple[str, ...]


class Sending(Protocol):
    """What the app tells Sieve about sending (built from ``[[upstreams]]``)."""

    lifetime: float
    """Queue lifetime for Sieve's mail (``[submission] queue_lifetime``)."""

    def route_for(self, owner: str, upstream: str) -> SendingRoute | None:
        """The route for mail ``owner``'s script sends about a message fetched from
        ``upstream`` (that upstream's SMTP when it has one), or None: nothing can send."""
        ...

    def own_addresses(self, owner: str) -> tuple[str, ...]:
        """Every address of ``owner``'s upstreams (never auto-replied to)."""
        ...

    def allow(self, owner: str, now: float) -> bool:
        """Count one message against ``owner``'s hourly cap; False when at the cap."""
        ...


class ResponseRecord(Protocol):
    def seen(self, id: str, handle: str, period: int) -> bool: ...


@dataclass
class Outcome:
    """What sending adds to a routed delivery."""

    outbound: list[NewOutbound] = field(default_factory=list)
    duplicates: list[DuplicateRecord] = field(default_factory=list)
    keep_instead: bool = False
    """A redirect without :copy could not be sent: file the message as the implicit keep."""
    lifetime: float = 0.0
    """Queue lifetime of ``outbound``."""


def _key(address: str) -> str:
    return address.strip().strip("<>").casefold()


def crlf(raw: bytes) -> bytes:
    """Line ends as SMTP wants them (bare LF and CR become CRLF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class SieveOutbound:
    """Turns one run's sending actions into queue items (module docstring)."""

    def __init__(self, sending: Sending, hostname: str = "localhost") -> None:
        self.sending = sending
        self.hostname = hostname

    def can_send(self, owner: str) -> bool:
        """The upload check: does ``owner`` have an upstream with ``[upstreams.smtp]``?"""
        return self.sending.route_for(owner, "") is not None

    def outcome(
        self,
        owner: str,
        result: Result,
        delivery: Delivery,
        envelope: Envelope,
        record: ResponseRecord,
        now: float,
    ) -> Outcome:
        from gateway.sieve import Redirect, Vacation
        from gateway.sieve.message import SieveMessage

        out = Outcome(lifetime=self.sending.lifetime)
        actions = [a for a in result.actions if isinstance(a, Redirect | Vacation)]
        if not actions:
            return out
        route = self.sending.route_for(owner, delivery.upstream)
        own = self._own(owner, route, envelope)
        message = SieveMessage(delivery.raw)
        where = {"owner": owner, "upstream": delivery.upstream, "uidl": delivery.uidl}
        for action in actions:
            if isinstance(action, Redirect):
                item = self._redirect(owner, action, route, own, delivery, envelope, now, where)
                if item is not None:
                    out.outbound.append(item)
                elif not action.copy:
                    out.keep_instead = True
            else:
                self._vacation(owner, action, route, own, message, envelope, record, now, out)
        return out

    def _own(self, owner: str, route: SendingRoute | None, envelope: Envelope) -> list[str]:
        own = list(self.sending.own_addresses(owner))
        if route is not None:
            own.extend(route.addresses)
        if envelope.rcpt_to:
            own.append(envelope.rcpt_to)
        return own

    def _sender_address(self, route: SendingRoute, envelope: Envelope) -> str:
        """The owner's address on the route: the receiving address when it is one."""
        wanted = _key(envelope.rcpt_to)
        for address in route.addresses:
            if _key(address) == wanted:
                return address
        return route.addresses[0]

    # -- redirect (RFC 5228 §4.2) -------------------------------------------------------

    def _redirect(
        self,
        owner: str,
        action: Redirect,
        route: SendingRoute | None,
        own: Sequence[str],
        delivery: Delivery,
        envelope: Envelope,
        now: float,
        where: dict[str, str],
    ) -> NewOutbound | None:
        if route is None:
            log.warning("sieve.redirect_not_sent", reason="no_sending_upstream", **where)
            return None
        sender = self._sender_address(route, envelope)
        target = _key(action.address)
        if target in {_key(a) for a in own}:
            log.warning("sieve.redirect_not_sent", reason="to_own_address", **where)
            return None
        from gateway.sieve.message import SieveMessage

        raw = bytes(delivery.raw)
        marks = SieveMessage(raw).raw_values(LOOP_HEADER)
        if any(_key(v) == _key(sender) for v in marks):
            log.warning("sieve.redirect_not_sent", reason="loop", **where)
            return None
        if not self.sending.allow(owner, now):
            log.warning("sieve.redirect_not_sent", reason="hourly_limit", **where)
            return None
        content = f"{LOOP_HEADER}: <{sender}>\r\n".encode("ascii", "replace") + crlf(raw)
        ids = SieveMessage(raw).header_values("message-id")
        log.info("sieve.redirect_queued", route=route.name, **where)
        return NewOutbound(
            user=owner,
            route=route.name,
            mail_from=sender,
            recipients=(action.address,),
            content=content,
            message_id=ids[0].strip() if ids else None,
        )

    # -- vacation (RFC 5230) -------------------------------------------------------------

    def _vacation(
        self,
        owner: str,
        action: Vacation,
        route: SendingRoute | None,
        own: list[str],
        message: SieveMessage,
        envelope: Envelope,
        record: ResponseRecord,
        now: float,
        out: Outcome,
    ) -> None:
        where = {"owner": owner}
        if route is None:
            log.warning("sieve.vacation_not_sent", reason="no_sending_upstream", **where)
            return
        mine = own + list(action.addresses)
        reason = no_reply_reason(message, envelope.mail_from, mine)
        if reason is not None:
            log.info("sieve.vacation_not_sent", reason=reason, **where)
            return
        sender = envelope.mail_from
        handle = VACATION_HANDLE_PREFIX + action.handle
        if action.period > 0 and record.seen(_key(sender), handle, action.period):
            log.info("sieve.vacation_not_sent", reason="already_replied", **where)
            return
        if not self.sending.allow(owner, now):
            log.warning("sieve.vacation_not_sent", reason="hourly_limit", **where)
            return
        from_address = action.from_address or self._sender_address(route, envelope)
        reply = vacation_reply(action, message, from_address, sender, self.hostname, now)
        out.outbound.append(
            NewOutbound(
                user=owner,
                route=route.name,
                mail_from="",  # RFC 5230 §5: the null reverse-path
                recipients=(sender,),
                content=reply,
                message_id=None,
            )
        )
        if action.period > 0:
            out.duplicates.append(DuplicateRecord(handle, _key(sender), action.period, True))
        log.info("sieve.vacation_queued", route=route.name, **where)


def no_reply_reason(message: SieveMessage, sender: str, mine: Sequence[str]) -> str | None:
    """Why RFC 5230 §4.5/§4.6 (and RFC 3834 §2) forbid answering, or None."""
    from gateway.sieve.message import parse_addresses

    if not sender:
        return "no_envelope_sender"
    parsed = parse_addresses(sender)
    if not parsed or parsed[0].domain is None:
        return "bad_envelope_sender"
    own = {_key(a) for a in mine if a}
    if _key(sender) in own:
        return "own_address"
    local = parsed[0].localpart.casefold()
    if (
        local in ROBOT_LOCALPARTS
        or local.startswith(ROBOT_PREFIXES)
        or local.endswith(ROBOT_SUFFIXES)
    ):
        return "mail_robot"
    for value in message.header_values("auto-submitted"):
        if value.split(";")[0].strip().casefold() != "no":
            return "auto_submitted"
    if any(message.has_header(name) for name in LIST_FIELDS):
        return "mailing_list"
    for value in message.header_values("precedence"):
        if value.strip().casefold() in ("bulk", "junk", "list"):
            return "precedence"
    for value in message.header_values("x-auto-response-suppress"):
        if {p.strip().casefold() for p in value.split(",")} & {"oof", "all"}:
            return "response_suppressed"
    named = {
        _key(a.all)
        for name in RECIPIENT_FIELDS
        for value in message.raw_values(name)
        for a in parse_addresses(value)
    }
    if not named & own:
        return "not_addressed_to_user"
    return None


def _encoded(text: str) -> str:
    """A header value, RFC 2047-encoded when it is not plain ASCII."""
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        return Header(text, "utf-8").encode()
    return text


def vacation_reply(
    action: Vacation,
    original: SieveMessage,
    from_address: str,
    to_address: str,
    hostname: str,
    now: float,
) -> bytes:
    """The reply (RFC 5230 §5): Auto-Submitted: auto-replied (RFC 3834 §5), In-Reply-To
    and References to the original, Subject ``:subject`` or "Auto: " + the original's
    (§5.4); the reason as UTF-8 text, or as the MIME entity it is with ``:mime``."""
    subjects = original.header_values("subject")
    subject = action.subject
    if subject is None:
        subject = "Auto: " + (subjects[0].strip() if subjects else "")
    ids = [v.strip() for v in original.raw_values("message-id") if v.strip()]
    references = " ".join(v.strip() for v in original.raw_values("references"))
    digest = hashlib.sha256(f"{to_address}{now}{action.handle}".encode()).hexdigest()[:24]
    lines = [
        f"From: {_encoded(from_address)}",
        f"To: <{to_address}>",
        f"Subject: {_encoded(subject)}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <vacation.{digest}@{hostname}>",
        "Auto-Submitted: auto-replied",
    ]
    if ids:
        lines.append(f"In-Reply-To: {ids[0]}")
        lines.append(f"References: {(references + ' ' + ids[0]).strip()}")
    lines.append("MIME-Version: 1.0")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if action.mime:
        return head + crlf(action.reason.encode("utf-8"))
    body = action.reason.encode("utf-8")
    try:
        action.reason.encode("ascii")
        cte = "7bit"
    except UnicodeEncodeError:
        cte = "8bit"
    head += (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Transfer-Encoding: {cte}\r\n".encode()
    )
    if not body.endswith(b"\n"):
        body += b"\n"
    return head + b"\r\n" + crlf(body)
