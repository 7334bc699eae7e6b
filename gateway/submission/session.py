"""The submission session: states, the command table, every command handler, replies
with enhanced status codes (RFC 6409, RFC 5321, RFC 4954, RFC 3207, RFC 1870, RFC 3463).

Sans-I/O like the ManageSieve session: :meth:`SubmissionSession.execute` turns one
command line into a generator that yields ``bytes`` to write and *actions*
(:class:`RunBlocking`, :class:`ReadLine`, :class:`ReadData`, :class:`Call`,
:class:`StartTLS`, :class:`Close`) that :mod:`gateway.submission.server` performs before
resuming it. This module is the only one that changes the session state.

States (``phase``): *greeted* (no EHLO yet) → *ready* (EHLO done) → *mail* (MAIL
accepted) → *rcpt* (a recipient accepted) → back to *ready* after DATA/RSET. Orthogonal:
``tls`` and ``user`` (None until AUTH). No MAIL without AUTH, ever: popgate is not an
open relay, and an unauthenticated client has nothing to do here (RFC 6409 §4.3).

Every reply except 220/221/334/354 carries an RFC 3463 code (RFC 2034 §3: once
ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx has one; 220 and 221 get one too,
as Postfix does, which clients accept). Exception text never reaches a client.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from gateway.security.auth import Authenticator
from gateway.security.sasl import MalformedPlain, PlainCredentials, check_plain, decode_plain
from gateway.store.interfaces import StoreError
from gateway.submission import headers
from gateway.submission.parser import MessageTooLarge
from gateway.submission.policy import (
    RateLimiter,
    Refusal,
    SenderPolicy,
    SubmissionLimits,
    check_recipient_count,
    check_size,
    header_addresses,
)

log = structlog.get_logger(__name__)

SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MAILBOX = re.compile(
    rf'^(?:"(?:[^"\\\r\n]|\\.)*"|{_ATOM}(?:\.{_ATOM})*)'
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[!-Z^-~]+\])$"
)
"""RFC 5321 §4.1.2 Mailbox, ASCII only (SMTPUTF8 is not offered, see the package doc)."""

_PATH = re.compile(rb"^(?i:(FROM|TO)):\s*<([^<>]*)>(?:\s+(.*))?$")


# ---- actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunBlocking:
    """Run ``call`` off the reactor thread (scrypt); ``login`` is the user name given, so
    the glue applies the shared login penalty around it. Resumes with the result."""

    call: Callable[[], Any]
    login: str


@dataclass(frozen=True)
class ReadLine:
    """Resume with the client's next line (a SASL response), ``bytes``."""


@dataclass(frozen=True)
class ReadData:
    """Read a DATA body of at most ``max_size`` octets; resume with its bytes or a
    :class:`~gateway.submission.parser.MessageTooLarge`."""

    max_size: int


@dataclass(frozen=True)
class Call:
    """Call ``fn(*args)`` on the reactor (may return a Deferred); resume with its result
    or have its exception thrown in."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StartTLS:
    """Drop buffered plaintext input (CVE-2011-0411) and start TLS."""


@dataclass(frozen=True)
class Close:
    """Close once everything written has been sent."""


Action = RunBlocking | ReadLine | ReadData | Call | StartTLS | Close
Run = Generator[bytes | Action, Any, None]


@dataclass(frozen=True)
class Submission:
    """A message accepted for relaying, handed to the ``accept`` callable."""

    user: str
    route: str
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes
    """As submitted, Message-ID/Date added if missing, Bcc kept: the Sent copy's source."""
    relay: bytes
    """What the upstream gets: ``raw`` without Bcc."""
    message_id: str | None
    eight_bit: bool


Accept = Callable[[Submission], Any]
"""Commits the submission (queue, and the Sent copy) and returns its queue id, or a
Deferred of it; the 250 is sent only after it returns (RFC 5321 §4.1.1.4, §6.1)."""


def reply(code: int, enhanced: str | None, text: str) -> bytes:
    """One reply line; ``text`` is cut to a line and never holds CR/LF."""
    text = text.replace("\r", " ").replace("\n", " ")[:400]
    head = f"{code} {enhanced} " if enhanced else f"{code} "
    return (head + text).encode("utf-8", "replace") + b"\r\n"


def refusal_reply(refusal: Refusal) -> bytes:
    return reply(refusal.code, refusal.enhanced, refusal.text)


class SubmissionSession:
    """One client's session; see the module docstring."""

    def __init__(
        self,
        *,
        hostname: str,
        policy: SenderPolicy,
        limits: SubmissionLimits,
        authenticator: Authenticator,
        rate: RateLimiter,
        accept: Accept,
        now: Callable[[], float],
        peer: str = "unknown",
        tls_active: bool = False,
        tls_available: bool = False,
        plaintext_auth_allowed: bool = False,
    ) -> None:
        self.hostname = hostname
        self.policy = policy
        self.limits = limits
        self.authenticator = authenticator
        self.rate = rate
        self.accept = accept
        self.now = now
        self.peer = peer
        self.tls = tls_active
        self.tls_available = tls_available
        self.plaintext_auth_allowed = plaintext_auth_allowed
        self.helo: str | None = None
        self.user: str | None = None
        self.failed_commands = 0
        self.closing = False
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.mail_from: str | None = None
        self.route: str | None = None
        self.recipients: list[str] = []
        self.eight_bit = False

    @property
    def auth_allowed(self) -> bool:
        """RFC 6409 §4.3 / RFC 8314 §5.2: passwords only over TLS off loopback."""
        return self.tls or self.plaintext_auth_allowed

    # -- fixed replies --

    def greeting(self) -> bytes:
        return reply(220, None, f"{self.hostname} ESMTP popgate submission")

    def line_too_long(self) -> bytes:
        return reply(500, "5.5.6", "Line too long")

    def timed_out(self) -> bytes:
        self.closing = True
        return reply(421, "4.4.2", f"{self.hostname} Timeout, closing connection")

    def capabilities(self) -> list[str]:
        caps = [
            f"SIZE {self.limits.max_message_size}",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_available and not self.tls:
            caps.append("STARTTLS")
        if self.auth_allowed and self.user is None:
            caps.append("AUTH " + " ".join(SASL_MECHANISMS))
        return caps

    # -- dispatch --

    def execute(self, line: bytes) -> Run:
        verb, _, rest = line.strip().partition(b" ")
        name = verb.decode("ascii", "replace").upper()
        handler = _COMMANDS.get(name)
        if handler is None:
            yield from self._syntax_error(reply(500, "5.5.2", "Command not recognized"))
            return
        try:
            result = yield from handler(self, rest.strip())
        except Refusal as refused:
            result = refusal_reply(refused)
        if result is not None:
            yield result

    def _syntax_error(self, answer: bytes) -> Run:
        self.failed_commands += 1
        yield answer
        if self.failed_commands >= self.limits.max_failed_commands:
            self.closing = True
            yield reply(421, "4.7.0", "Too many errors, closing connection")
            yield Close()

    # -- commands --

    def do_ehlo(self, arg: bytes, extended: bool = True) -> Generator[Any, Any, bytes | None]:
        if not arg:
            yield from self._syntax_error(reply(501, "5.5.4", "Domain name required"))
            return None
        self.helo = arg.decode("ascii", "replace")[:255]
        self._reset_transaction()
        self.failed_commands = 0
        if not extended:
            return reply(250, None, self.hostname)
        lines = [self.hostname, *self.capabilities()]
        return b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
            for i, text in enumerate(lines)
        )

    def do_helo(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        return (yield from self.do_ehlo(arg, extended=False))

    def do_starttls(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        if arg:
            return reply(501, "5.5.4", "STARTTLS takes no parameters")
        if self.tls:
            return reply(503, "5.5.1", "TLS already active")
        if not self.tls_available:
            return reply(454, "4.7.0", "TLS not available")
        yield reply(220, "2.0.0", "Ready to start TLS")
        yield StartTLS()
        # RFC 3207 §4.2: forget everything learnt from the client before TLS.
        self.tls = True
        self.helo = None
        self.user = None
        self._reset_transaction()
        return None

    def do_auth(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        if self.helo is None:
            return reply(503, "5.5.1", "Send EHLO first")
        if self.user is not None:
            return reply(503, "5.5.1", "Already authenticated")
        if self.mail_from is not None:
            return reply(503, "5.5.1", "AUTH is not allowed during a mail transaction")
        if not self.auth_allowed:
            return reply(538, "5.7.11", "Encryption required: use STARTTLS first")
        mechanism, _, initial = arg.partition(b" ")
        mech = mechanism.decode("ascii", "replace").upper()
        if mech not in SASL_MECHANISMS:
            return reply(504, "5.5.4", "Unrecognized authentication mechanism")
        try:
            if mech == "PLAIN":
                response = yield from self._sasl_step(b"", initial.strip() or None)
                try:
                    credentials = decode_plain(response)
                except MalformedPlain:
                    return reply(501, "5.5.2", "Invalid PLAIN response")
                user = credentials.authcid
            else:
                user = (
                    (yield from self._sasl_step(b"Username:", initial.strip() or None))
                    .decode("utf-8")
                    .strip()
                )
                password = yield from self._sasl_step(b"Password:", None)
                credentials = PlainCredentials("", user, password)
        except Refusal as refused:
            return refusal_reply(refused)
        except UnicodeDecodeError:
            return reply(501, "5.5.2", "Invalid SASL response")
        # A foreign PLAIN authzid fails inside the check (gateway/security/sasl.py), so
        # it is delayed and counted like a wrong password.
        canonical = yield RunBlocking(
            partial(check_plain, self.authenticator, credentials), login=user
        )
        if canonical is None:
            log.info("submission.auth_failed", user=user[:128], peer=self.peer)
            return reply(535, "5.7.8", "Authentication credentials invalid")
        self.user = canonical
        self.failed_commands = 0
        log.info("submission.login", user=canonical, peer=self.peer, mechanism=mech)
        return reply(235, "2.7.0", "Authentication successful")

    def _sasl_step(self, challenge: bytes, given: bytes | None) -> Generator[Any, Any, bytes]:
        """One SASL round (RFC 4954 §4): the initial response if given ("=" is empty),
        else a 334 challenge and the client's line; "*" cancels."""
        if given is None:
            yield b"334 " + base64.b64encode(challenge) + b"\r\n"
            given = yield ReadLine()
        if given == b"*":
            raise Refusal(501, "5.0.0", "Authentication cancelled")
        if given == b"=":
            return b""
        try:
            return base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(501, "5.5.2", "Invalid base64 in SASL response") from None

    def do_mail(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        if self.user is None:
            return reply(530, "5.7.0", "Authentication required")
        if self.helo is None:
            return reply(503, "5.5.1", "Send EHLO first")
        if self.mail_from is not None:
            return reply(503, "5.5.1", "Nested MAIL command")
        kind, address, params = _path(arg)
        if kind != "FROM":
            yield from self._syntax_error(reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return None
        eight_bit = False
        for key, value in params:
            if key == "SIZE" and value is not None and value.isdigit():
                check_size(int(value), self.limits)
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                eight_bit = value.upper() == "8BITMIME"
            elif key == "AUTH" and value is not None:
                pass  # RFC 4954 §5: accepted; the authenticated user is what counts
            else:
                return reply(555, "5.5.4", f"Unsupported MAIL parameter {key}")
        if address and not _MAILBOX.match(address):
            return reply(553, "5.1.7", "Bad sender address syntax")
        route = self.policy.route_for(self.user, address)
        self.rate.check(self.user, self.now())
        self.mail_from, self.route, self.eight_bit = address, route.name, eight_bit
        return reply(250, "2.1.0", "Sender ok")
        yield  # pragma: no cover - makes this a generator

    def do_rcpt(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        if self.mail_from is None:
            return reply(503, "5.5.1", "Need MAIL before RCPT")
        kind, address, params = _path(arg)
        if kind != "TO":
            yield from self._syntax_error(reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return None
        if params:
            return reply(555, "5.5.4", f"Unsupported RCPT parameter {params[0][0]}")
        if not _MAILBOX.match(address):
            return reply(553, "5.1.3", "Bad recipient address syntax")
        check_recipient_count(len(self.recipients), self.limits)
        self.recipients.append(address)
        return reply(250, "2.1.5", "Recipient ok")

    def do_data(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        if arg:
            return reply(501, "5.5.4", "DATA takes no parameters")
        if self.mail_from is None or self.user is None or self.route is None:
            return reply(503, "5.5.1", "Need MAIL before DATA")
        if not self.recipients:
            return reply(554, "5.5.1", "No valid recipients")
        yield b"354 End data with <CR><LF>.<CR><LF>\r\n"
        received = yield ReadData(self.limits.max_message_size)
        user, route, mail_from = self.user, self.route, self.mail_from
        recipients, eight_bit = tuple(self.recipients), self.eight_bit
        self._reset_transaction()
        if isinstance(received, MessageTooLarge):
            check_size(received.size, self.limits)
        raw: bytes = received
        self.policy.check_headers(
            user,
            header_addresses(headers.values(raw, "From")),
            next(iter(header_addresses(headers.values(raw, "Sender"))), None),
        )
        self.rate.check(user, self.now())
        domain = mail_from.rpartition("@")[2] or self.hostname
        raw = headers.complete_header(raw, domain, self.now())
        submission = Submission(
            user=user,
            route=route,
            mail_from=mail_from,
            recipients=recipients,
            raw=raw,
            relay=headers.strip_bcc(raw),
            message_id=headers.message_id(raw),
            eight_bit=eight_bit or any(b > 0x7F for b in raw),
        )
        try:
            queue_id = yield Call(self.accept, (submission,))
        except StoreError as e:
            log.error("submission.enqueue_failed", user=user, error=str(e))
            return reply(451, "4.3.0", "Local error, message not accepted; try again later")
        self.rate.record(user, self.now())
        log.info(
            "submission.accepted",
            user=user,
            route=route,
            recipients=len(recipients),
            size=len(raw),
            queue_id=str(queue_id),
        )
        return reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def do_rset(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        self._reset_transaction()
        return reply(250, "2.0.0", "Ok")
        yield  # pragma: no cover

    def do_noop(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        return reply(250, "2.0.0", "Ok")
        yield  # pragma: no cover

    def do_quit(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        self.closing = True
        yield reply(221, "2.0.0", "Bye")
        yield Close()
        return None

    def do_not_implemented(self, arg: bytes) -> Generator[Any, Any, bytes | None]:
        return reply(502, "5.5.1", "Command not implemented")
        yield  # pragma: no cover


_COMMANDS: dict[str, Callable[[SubmissionSession, bytes], Generator[Any, Any, bytes | None]]] = {
    "EHLO": SubmissionSession.do_ehlo,
    "HELO": SubmissionSession.do_helo,
    "STARTTLS": SubmissionSession.do_starttls,
    "AUTH": SubmissionSession.do_auth,
    "MAIL": SubmissionSession.do_mail,
    "RCPT": SubmissionSession.do_rcpt,
    "DATA": SubmissionSession.do_data,
    "RSET": SubmissionSession.do_rset,
    "NOOP": SubmissionSession.do_noop,
    "QUIT": SubmissionSession.do_quit,
    "VRFY": SubmissionSession.do_not_implemented,
    "EXPN": SubmissionSession.do_not_implemented,
    "HELP": SubmissionSession.do_not_implemented,
    "BDAT": SubmissionSession.do_not_implemented,
}
"""The command table; every command is legal in every state and checks its own
preconditions (RFC 5321 §4.1.4 orders them: EHLO, AUTH, MAIL, RCPT, DATA)."""


def _path(arg: bytes) -> tuple[str | None, str, list[tuple[str, str | None]]]:
    """``FROM:<a> K=V ...`` → ("FROM", "a", [(K, V)]); (None, "", []) if malformed."""
    match = _PATH.match(arg.strip())
    if match is None:
        return None, "", []
    try:
        address = match.group(2).decode("ascii").strip()
    except UnicodeDecodeError:
        return match.group(1).decode().upper(), "\0", []
    if ":" in address and address.startswith("@"):
        address = address.split(":", 1)[1]  # RFC 5321 §4.1.2: ignore a source route
    params: list[tuple[str, str | None]] = []
    for word in (match.group(3) or b"").split():
        key, eq, value = word.decode("ascii", "replace").partition("=")
        params.append((key.upper(), value if eq else None))
    return match.group(1).decode().upper(), address, params
