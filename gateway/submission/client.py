"""The relay client: one SMTP conversation that hands one queued message to an
upstream's SMTP server (RFC 5321, RFC 3207 STARTTLS, RFC 8314 implicit TLS, RFC 4954
AUTH, RFC 1870 SIZE, RFC 6152 8BITMIME).

Why not :class:`twisted.mail.smtp.ESMTPClient` (see the package docstring for the full
audit): it dot-stuffs per chunk (``transformChunk`` misses a "." that starts a chunk)
and turns every LF into CRLF (a stored CRLF message becomes CR CR LF); it never sends
``SIZE=`` or ``BODY=8BITMIME``; and with ``requireTransportSecurity`` off it logs in
in clear text when STARTTLS is missing. This client is a few awaitable steps over a
line receiver, with the POP3 client's rules: verified TLS (:func:`client_tls_options`),
no credentials without TLS off loopback, a timeout on every step.

The result is a :class:`RelayOutcome`, never an exception: what the relay service
needs to decide sent / deferred / failed per recipient. A connection lost after the
final "." but before the reply is *deferred* (RFC 5321 §4.1.1.4 / RFC 1047: the
upstream may or may not have taken it; retrying risks a duplicate, dropping risks a
loss, and a duplicate is the lesser harm).
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from gateway.core.net import is_loopback_host
from gateway.security.tls import TLSConfigError, client_tls_options
from gateway.submission.policy import SmtpUpstream

log = structlog.get_logger(__name__)

MAX_REPLY_LINE = 4096
"""Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512)."""

MAX_REPLY_LINES = 100
"""Most lines in one multi-line reply (an EHLO answer has a dozen)."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.code} " + " / ".join(line for line in self.lines if line)

    @property
    def enhanced(self) -> str | None:
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
            return first
        return None


@dataclass(frozen=True)
class RelayOutcome:
    """What one attempt achieved.

    ``reply`` is the upstream's answer to DATA when it was 2xx (the message is then sent
    to ``delivered``); ``deferred``/``failed`` list recipients with the reply that put
    them there; ``error`` says why the whole attempt stopped (connection, TLS, auth,
    a 4xx/5xx outside RCPT) and ``permanent`` whether retrying can help.
    """

    reply: str | None = None
    delivered: tuple[str, ...] = ()
    deferred: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str, str], ...] = ()
    """(recipient, RFC 3463 status, reply)."""
    error: str | None = None
    permanent: bool = False
    remote_host: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)


class _Stop(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class SMTPClientProtocol(LineOnlyReceiver):
    """Collects replies and hands them to the one waiting step."""

    delimiter = b"\r\n"
    MAX_LENGTH = MAX_REPLY_LINE

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: defer.Deferred[Reply] | None = None
        self._lost: Failure | None = None
        self.tls = False

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        code = text[:3]
        if not code.isdigit() or text[3:4] not in ("", " ", "-"):
            self._fail(_Stop(f"invalid reply line {text[:80]!r}"))
            return
        self._lines.append(text[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._fail(_Stop("reply too long"))
            return
        if text[3:4] == "-":
            return
        reply = Reply(int(code), tuple(self._lines))
        self._lines = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(reply)
        else:
            self._replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(_Stop("reply line too long"))

    def _fail(self, exc: Exception) -> None:
        self.transport.abortConnection()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(exc)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._lost = reason
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(reason)

    def next_reply(self, clock: Any, timeout: float) -> defer.Deferred[Reply]:
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        waiter: defer.Deferred[Reply] = defer.Deferred()
        self._waiter = waiter
        return waiter.addTimeout(timeout, clock)

    def command(self, line: bytes, clock: Any, timeout: float) -> defer.Deferred[Reply]:
        self.transport.write(line + b"\r\n")
        return self.next_reply(clock, timeout)


def dot_stuff(content: bytes) -> bytes:
    """RFC 5321 §4.5.2 over a whole CRLF message, with the terminator."""
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"


def _extensions(reply: Reply) -> dict[str, str]:
    ext: dict[str, str] = {}
    for line in reply.lines[1:]:
        word, _, rest = line.partition(" ")
        ext[word.upper()] = rest.strip()
    return ext


def _status(reply: Reply) -> str:
    return reply.enhanced or (f"{reply.code // 100}.0.0" if reply.code >= 400 else "5.0.0")


def describe(exc: BaseException, host: str) -> str:
    """A short human reason for a connection-level failure (for status and bounces)."""
    if isinstance(exc, defer.TimeoutError | defer.CancelledError):
        return f"{host} did not answer in time"
    if isinstance(exc, error.ConnectionRefusedError):
        return f"{host} refused the connection"
    if isinstance(exc, error.DNSLookupError):
        return f"cannot resolve {host}"
    if isinstance(exc, error.ConnectionDone | error.ConnectionLost):
        return f"{host} closed the connection"
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = ()  # type: ignore[assignment,misc]
    from OpenSSL import SSL

    if isinstance(exc, VerificationError):
        return f"TLS certificate of {host} does not match the host name"
    if isinstance(exc, SSL.Error):
        if "certificate verify failed" in str(exc):
            return f"TLS certificate of {host} is not trusted"
        return f"TLS with {host} failed"
    if isinstance(exc, _Stop | TLSConfigError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot connect to {host}: {exc.strerror or exc}"
    return f"{type(exc).__name__} talking to {host}"


class _ClientFactory(Factory):
    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:
        protocol = SMTPClientProtocol()
        protocol.factory = self
        return protocol


async def relay_message(
    upstream: SmtpUpstream,
    *,
    mail_from: str,
    recipients: Sequence[str],
    content: bytes,
    reactor: Any,
    helo_name: str,
    eight_bit: bool | None = None,
) -> RelayOutcome:
    """One attempt to hand ``content`` to ``upstream`` for ``recipients``."""
    host = upstream.host
    if upstream.tls not in ("implicit", "starttls", "none"):
        return RelayOutcome(error=f"unknown tls mode {upstream.tls!r}", remote_host=host)
    if upstream.tls == "none" and not is_loopback_host(host):
        return RelayOutcome(
            error=f'tls = "none" to {host} would send the password in clear', remote_host=host
        )
    try:
        options = client_tls_options(host, upstream.ca_file) if upstream.tls != "none" else None
    except TLSConfigError as e:
        return RelayOutcome(error=str(e), remote_host=host)
    endpoint: Any = HostnameEndpoint(reactor, host, upstream.port, timeout=upstream.timeout)
    if upstream.tls == "implicit":
        endpoint = wrapClientTLS(options, endpoint)
    try:
        client: SMTPClientProtocol = await endpoint.connect(_ClientFactory())
    except Exception as e:
        return RelayOutcome(error=describe(e, host), remote_host=host)
    client.tls = upstream.tls == "implicit"
    conversation = _Conversation(client, upstream, reactor, helo_name, options)
    try:
        return await conversation.run(mail_from, tuple(recipients), content, eight_bit)
    except _Stop as e:
        return RelayOutcome(error=str(e), permanent=e.permanent, remote_host=host)
    except Exception as e:
        return RelayOutcome(error=describe(e, host), remote_host=host)
    finally:
        client.transport.loseConnection()


class _Conversation:
    def __init__(
        self,
        client: SMTPClientProtocol,
        upstream: SmtpUpstream,
        reactor: Any,
        helo_name: str,
        options: Any,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.reactor = reactor
        self.helo_name = helo_name.encode("ascii", "replace")
        self.options = options

    async def cmd(self, line: bytes, step: str, expect: int, final: bool = False) -> Reply:
        """Send a command; a reply other than ``expect``'s class stops the attempt,
        permanently (bounce) only for a 5xx when ``final`` (the message's own fault,
        not the server's or the configuration's, which a retry may outlive)."""
        reply = await self.client.command(line, self.reactor, self.upstream.timeout)
        if reply.code // 100 != expect // 100:
            raise _Stop(
                f"{self.upstream.host} refused {step}: {reply.text}", final and reply.code >= 500
            )
        return reply

    async def ehlo(self) -> dict[str, str]:
        reply = await self.cmd(b"EHLO " + self.helo_name, "EHLO", 250)
        return _extensions(reply)

    async def run(
        self, mail_from: str, recipients: tuple[str, ...], content: bytes, eight_bit: bool | None
    ) -> RelayOutcome:
        host, up = self.upstream.host, self.upstream
        greeting = await self.client.next_reply(self.reactor, up.timeout)
        if greeting.code != 220:
            raise _Stop(f"{host} greeted with {greeting.text}")
        ext = await self.ehlo()
        if up.tls == "starttls":
            if "STARTTLS" not in ext:
                raise _Stop(f"{host} does not offer STARTTLS; refusing to go on without TLS")
            await self.cmd(b"STARTTLS", "STARTTLS", 220)
            self.client.transport.startTLS(self.options)
            self.client.tls = True
            ext = await self.ehlo()  # RFC 3207 §4.2: forget what was said before TLS
        if up.username:
            await self.authenticate(ext)
        if eight_bit is None:
            eight_bit = any(b > 0x7F for b in content)
        size = len(content)
        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and size > int(limit):
            raise _Stop(f"{host} accepts at most {limit} octets; the message has {size}", True)
        mail = b"MAIL FROM:<" + mail_from.encode("ascii") + b">"
        if "SIZE" in ext:
            mail += b" SIZE=%d" % size
        if eight_bit:
            if "8BITMIME" not in ext:
                raise _Stop(f"{host} does not accept 8-bit messages (8BITMIME)", True)
            mail += b" BODY=8BITMIME"
        await self.cmd(mail, "MAIL FROM", 250, final=True)
        accepted: list[str] = []
        deferred: list[tuple[str, str]] = []
        failed: list[tuple[str, str, str]] = []
        for rcpt in recipients:
            reply = await self.client.command(
                b"RCPT TO:<" + rcpt.encode("ascii") + b">", self.reactor, up.timeout
            )
            if reply.code // 100 == 2:
                accepted.append(rcpt)
            elif reply.code // 100 == 4:
                deferred.append((rcpt, reply.text))
            else:
                failed.append((rcpt, _status(reply), reply.text))
        if not accepted:
            await self._quit()
            return RelayOutcome(deferred=tuple(deferred), failed=tuple(failed), remote_host=host)
        await self.cmd(b"DATA", "DATA", 354, final=True)
        self.client.transport.write(dot_stuff(content))
        reply = await self.client.next_reply(self.reactor, max(up.timeout, 600.0))
        if reply.code // 100 == 2:
            await self._quit()
            return RelayOutcome(
                reply=reply.text,
                delivered=tuple(accepted),
                deferred=tuple(deferred),
                failed=tuple(failed),
                remote_host=host,
            )
        await self._quit()
        if reply.code // 100 == 4:
            deferred += [(r, reply.text) for r in accepted]
        else:
            failed += [(r, _status(reply), reply.text) for r in accepted]
        return RelayOutcome(deferred=tuple(deferred), failed=tuple(failed), remote_host=host)

    async def authenticate(self, ext: dict[str, str]) -> None:
        host, up = self.upstream.host, self.upstream
        if not self.client.tls and not is_loopback_host(host):
            raise _Stop(f"refusing to send credentials to {host} without TLS")
        mechanisms = ext.get("AUTH", "").upper().split()
        user, password = up.username.encode("utf-8"), up.password.encode("utf-8")
        if up.mechanism == "xoauth2":
            await self._xoauth2(mechanisms, user, password)
        elif "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            await self.cmd(b"AUTH PLAIN " + token, "AUTH PLAIN", 235)
        elif "LOGIN" in mechanisms:
            await self.cmd(b"AUTH LOGIN", "AUTH LOGIN", 334)
            await self.cmd(base64.b64encode(user), "AUTH LOGIN", 334)
            await self.cmd(base64.b64encode(password), "AUTH LOGIN", 235)
        else:
            raise _Stop(f"{host} offers no AUTH mechanism popgate speaks (PLAIN, LOGIN)")

    async def _xoauth2(self, mechanisms: list[str], user: bytes, token: bytes) -> None:
        """SASL XOAUTH2 (Google's and Microsoft's SMTP): one initial response; a failure
        is a 334 carrying a JSON error, answered with an empty line to get the final
        reply. A refused token is temporary (the next attempt gets a fresh one)."""
        host = self.upstream.host
        if "XOAUTH2" not in mechanisms:
            raise _Stop(f"{host} does not offer AUTH XOAUTH2")
        response = base64.b64encode(b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01")
        reply = await self.client.command(
            b"AUTH XOAUTH2 " + response, self.reactor, self.upstream.timeout
        )
        if reply.code == 334:
            reply = await self.client.command(b"", self.reactor, self.upstream.timeout)
        if reply.code != 235:
            raise _Stop(f"{host} refused AUTH XOAUTH2: {reply.text}")

    async def _quit(self) -> None:
        try:
            await self.client.command(b"QUIT", self.reactor, min(self.upstream.timeout, 10.0))
        except Exception:
            pass  # the outcome is already known; QUIT is a courtesy (RFC 5321 §4.1.1.10)
