"""The POP3 client connection to one upstream: verified TLS, explicit login, bounded lines.

Built on :class:`twisted.mail.pop3.AdvancedPOP3Client`, with its traps closed
(see TWISTED-NOTES.md):

- its 16 KB line limit drops real mail, so :data:`MAX_LINE_LENGTH` raises it and the
  fetcher bounds the message size itself;
- it has no timeout by default, so every step gets one (``upstream.timeout`` seconds
  without a line from the server aborts the connection);
- ``login()`` would pick APOP whenever the greeting carries a challenge, in cleartext and
  before STLS, and ``startTLS()`` without options verifies nothing. Neither is used:
  :func:`connect` sets up TLS with certificate and host-name verification
  (RFC 2595 §2.4, RFC 6125 §6) and :func:`login` sends exactly the configured mechanism,
  refusing to send credentials on a connection that should be encrypted but is not.

RETR bodies do not go through the line-by-line path: after the ``+OK`` the client reads
raw chunks (:class:`DotStuffedBody`, sans-I/O) and hands the consumer whole runs of lines,
one call and one timer reset per chunk instead of per line (see :meth:`UpstreamClient.retrieve`).

Errors reach callers as :class:`FetchError` subclasses with a stable ``kind`` for logs
and status; :func:`translate_failure` does the mapping from Twisted/OpenSSL errors.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, interfaces, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.mail.pop3 import AdvancedPOP3Client, ServerErrorResponse
from twisted.mail.pop3 import LineTooLong as TwistedLineTooLong
from twisted.python.failure import Failure

from gateway.core.net import is_loopback_host
from gateway.pop3.upstream import Upstream

MAX_LINE_LENGTH = 1024 * 1024
"""Longest line accepted from an upstream, CRLF excluded. RFC 5322 §2.1.1 caps lines at
998 octets but real mail (HTML, base64 without folding) breaks that; a line longer than
this still drops the connection, and the fetcher records that message as skipped."""

MAX_LISTING_LINES = 1_000_000
"""Most lines accepted in a UIDL or LIST answer (one per message in the maildrop)."""

MAX_LISTING_LINE_LENGTH = 1024
"""Longest UIDL/LIST line kept; a number, a space and a 70-character UIDL need far less."""

MAX_SERVER_TEXT = 200
"""How much of a server's -ERR text is kept in an error message."""

_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


# ---- errors -----------------------------------------------------------------------


class FetchError(Exception):
    """A fetch pass failed; ``kind`` is a short stable word for logs and status.

    ``result`` is set by the fetcher to what the pass achieved before failing (messages
    delivered before the failure stay delivered)."""

    kind = "error"
    result: Any = None


class UpstreamConfigError(FetchError):
    """The upstream's settings cannot be used safely (e.g. an unreadable ca_file)."""

    kind = "config"


class UpstreamConnectError(FetchError):
    """The TCP connection could not be made (refused, unreachable, DNS)."""

    kind = "connect"


class TLSVerificationError(FetchError):
    """The server's certificate is untrusted or does not name the host (RFC 6125 §6)."""

    kind = "tls_verify"


class UpstreamTLSError(FetchError):
    """The TLS handshake failed for a reason other than certificate verification."""

    kind = "tls"


class StartTLSUnavailable(FetchError):
    """tls = "starttls" but the server does not offer STLS (RFC 2595 §4): no login."""

    kind = "starttls_unavailable"


class LoginFailed(FetchError):
    """The server refused the credentials or the configured mechanism."""

    kind = "auth"


class UIDLUnsupported(FetchError):
    """The server has no UIDL (RFC 1939 §7 makes it optional); exactly-once needs it."""

    kind = "uidl_unsupported"


class StepTimeout(FetchError):
    """No answer within the per-step timeout."""

    kind = "timeout"


class UpstreamConnectionLost(FetchError):
    """The connection closed while a command was outstanding."""

    kind = "connection_lost"


class UpstreamLineTooLong(FetchError):
    """A line exceeded :data:`MAX_LINE_LENGTH`; the connection was dropped."""

    kind = "line_too_long"


class UpstreamServerError(FetchError):
    """The server answered -ERR to a command the pass cannot do without."""

    kind = "server_error"


class UpstreamProtocolError(FetchError):
    """The server broke the protocol (a status line that is neither +OK nor -ERR)."""

    kind = "protocol"


class FetchCancelled(FetchError):
    """The pass was cancelled (service stopping); the connection was dropped without QUIT."""

    kind = "cancelled"


class InsecureLoginRefused(FetchError):
    """Credentials would have gone over a connection that should be encrypted but is not."""

    kind = "insecure"


def _server_text(value: Any) -> str:
    if isinstance(value, ServerErrorResponse):
        value = value.args[0] if value.args else b""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text[:MAX_SERVER_TEXT]


def _is_tls_verification(exc: BaseException) -> str | None:
    """A human reason if ``exc`` is a certificate verification failure, else None."""
    try:
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency
        VerificationError = CertificateError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, VerificationError):
        return f"certificate does not match the host name ({exc})"
    if isinstance(exc, CertificateError):
        return f"unusable certificate ({exc})"
    from OpenSSL import SSL

    if isinstance(exc, SSL.Error) and "certificate verify failed" in str(exc):
        return "certificate verify failed (issuer not trusted, expired, or not valid for TLS)"
    return None


def translate_failure(failure: Failure | BaseException, host: str, step: str) -> FetchError:
    """Map a Twisted/OpenSSL/POP3 failure during ``step`` to a :class:`FetchError`."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, defer.CancelledError):
        return FetchCancelled(f"{step} with {host} cancelled")
    reason = _is_tls_verification(exc)
    if reason is not None:
        return TLSVerificationError(f"TLS certificate verification failed for {host}: {reason}")
    from OpenSSL import SSL

    if isinstance(exc, SSL.Error):
        return UpstreamTLSError(f"TLS handshake with {host} failed during {step}: {exc}")
    if isinstance(exc, error.TimeoutError):
        return StepTimeout(f"{host} did not answer within the timeout during {step}")
    if isinstance(exc, TwistedLineTooLong):
        return UpstreamLineTooLong(
            f"{host} sent a line longer than {MAX_LINE_LENGTH} octets during {step}"
        )
    if isinstance(exc, ServerErrorResponse):
        return UpstreamServerError(f"{host} refused {step}: {_server_text(exc)}")
    if isinstance(exc, error.ConnectingCancelledError | error.ConnectError | error.DNSLookupError):
        return UpstreamConnectError(f"cannot connect to {host}: {exc}")
    if isinstance(exc, error.ConnectionDone | error.ConnectionLost):
        return UpstreamConnectionLost(f"{host} closed the connection during {step}")
    if isinstance(exc, OSError):
        return UpstreamConnectError(f"cannot connect to {host}: {exc}")
    return FetchError(f"{step} with {host} failed: {type(exc).__name__}: {exc}")


# ---- the protocol -----------------------------------------------------------------


def _is_status_line(line: bytes) -> bool:
    return line.split(b" ", 1)[0] in (b"+OK", b"-ERR")


class BodyLineTooLong(Exception):
    """A line of a multi-line body is longer than the reader's ``max_line_length``."""


class DotStuffedBody:
    """Sans-I/O reader of one multi-line response body (RFC 1939 §3), fed in raw chunks.

    The body starts right after the ``+OK`` line and ends with a line holding a single
    ".", i.e. at the first ``CRLF.CRLF`` (or at a leading ``.CRLF`` for an empty body);
    a line the server began with "." arrives with one more "." that is removed here.

    :meth:`feed` cuts what it returns right after a CRLF, so every piece holds whole
    lines: the terminator and the ``CRLF..`` stuffing pattern are searched in bytes that
    start at a line start, never across two pieces, and one ``bytes.replace`` per piece
    undoes the stuffing. Only an unfinished last line (at most ``max_line_length``
    octets) is held back between calls.

    Lines are only split on CRLF, as Twisted's line reader did: a bare LF or CR from a
    broken server stays inside its line, and ``LF.LF`` does not end the body.
    """

    def __init__(self, max_line_length: int) -> None:
        self.max_line_length = max_line_length
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes | None, bytes | None]:
        """Take the next octets; return ``(piece, rest)``.

        ``piece`` is every line completed by this call, dot-unstuffed and joined by CRLF
        without the final CRLF (so ``piece + CRLF`` are the message octets), or None if
        no line was completed. ``rest`` is None while the body goes on, else the octets
        that followed the terminating ``.CRLF`` (the start of the next response).
        Raises :class:`BodyLineTooLong` for a line over ``max_line_length`` octets
        (CRLF excluded), before returning any part of the chunk that holds it.
        """
        held = len(self._pending)
        buf = self._pending + data if held else data
        if buf.startswith(b".\r\n"):  # the terminator right at a line start
            self._pending = b""
            return None, buf[3:]
        # What was held back has no CRLF; only its last octet can start one.
        start = max(0, held - 1)
        end = buf.find(b"\r\n.\r\n", start)
        if end >= 0:
            rest: bytes | None = buf[end + 5 :]
            pending = b""
        else:
            end = buf.rfind(b"\r\n", start)
            rest = None
            pending = buf if end < 0 else buf[end + 2 :]
            self._check_unfinished(pending)
            if end < 0:
                self._pending = pending
                return None, None
        self._check_lines(buf, end + 2)
        self._pending = pending
        piece = buf[:end]
        if piece.startswith(b".."):
            piece = piece[1:]
        return piece.replace(b"\r\n..", b"\r\n."), rest

    def _check_lines(self, buf: bytes, stop: int) -> None:
        """Every line in ``buf[:stop]`` (which ends with CRLF) is at most the limit long.

        Looks at the distance between CRLFs with one ``rfind`` per window of
        ``max_line_length + 2`` octets, so a chunk of short lines costs one call."""
        limit = self.max_line_length
        pos = 0
        while stop - pos > limit + 2:
            crlf = buf.rfind(b"\r\n", pos, pos + limit + 2)
            if crlf < 0:
                raise BodyLineTooLong()
            pos = crlf + 2

    def _check_unfinished(self, tail: bytes) -> None:
        # A CR at the very end may be the first half of the CRLF that ends the line.
        if len(tail) - tail.endswith(b"\r") > self.max_line_length:
            raise BodyLineTooLong()


class _StreamedRetr:
    """The ``consumer`` handed to ``sendLong`` for a RETR read in chunks: it marks the
    command (and travels with it through Twisted's queue of blocked commands) and
    carries the caller's consumer, which receives runs of lines."""

    __slots__ = ("consumer",)

    def __init__(self, consumer: Callable[[bytes], object]) -> None:
        self.consumer = consumer


class UpstreamClient(AdvancedPOP3Client):
    """AdvancedPOP3Client with a long line limit, a per-step timeout and lifecycle hooks.

    ``greeting`` fires with the server greeting (RFC 1939 §4) or fails if the connection
    is lost first; ``closed`` fires (never fails) when the connection is gone. Time is
    taken from the injected reactor only.
    """

    MAX_LENGTH = MAX_LINE_LENGTH
    allowInsecureLogin = False

    def __init__(self, reactor: Any, host: str, timeout: float) -> None:
        self._reactor = reactor
        self.host = host
        self.timeout = timeout
        self.greeting: defer.Deferred[bytes] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.connected_now = False
        self._aborted = False

    # TimeoutMixin asks this for its timer: use the injected reactor, not the global one.
    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self._reactor.callLater(period, func)

    def connectionMade(self) -> None:
        self.connected_now = True
        super().connectionMade()

    def serverGreeting(self, greeting: bytes) -> None:
        if not self.greeting.called:
            self.greeting.callback(greeting)

    def timeoutConnection(self) -> None:
        # abortConnection, not loseConnection: a stalled peer may never drain our writes.
        self._timedOut = True
        self.abort()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self.connected_now = False
        if not self.greeting.called:
            if self._timedOut:
                self.greeting.errback(error.TimeoutError())
            elif self._greetingError:
                self.greeting.errback(ServerErrorResponse(self._greetingError))
            else:
                self.greeting.errback(reason)
        super().connectionLost(reason)
        if not self.closed.called:
            self.closed.callback(None)

    # Each command restarts the step timer: the timeout bounds one step, not the session.
    def sendShort(self, cmd: bytes, args: bytes | None) -> defer.Deferred[Any]:
        if self.timeout > 0 and self.connected_now:
            self.resetTimeout()
        return super().sendShort(cmd, args)

    def sendLong(
        self,
        cmd: bytes,
        args: bytes | None,
        consumer: Callable[[Any], None],
        xform: Callable[[bytes], Any] | None,
    ) -> defer.Deferred[Any]:
        if self.timeout > 0 and self.connected_now:
            self.resetTimeout()
        return super().sendLong(cmd, args, consumer, xform)

    # RFC 1939 §3: every response starts with "+OK" or "-ERR". Twisted takes anything
    # else for -ERR, so a stray line would be read as the answer to the next command and
    # the session would run one answer behind; stop instead.
    def state_SHORT(self, line: bytes) -> str:
        if not _is_status_line(line):
            return self._protocol_violation(line)
        return super().state_SHORT(line)

    def state_LONG_INITIAL(self, line: bytes) -> str:
        if not _is_status_line(line):
            return self._protocol_violation(line)
        if isinstance(self._consumer, _StreamedRetr):
            if line.split(b" ", 1)[0] == b"+OK":
                # dataReceived hands everything from here to the body reader.
                self._body = DotStuffedBody(self.MAX_LENGTH)
                return "RETR_BODY"
            # -ERR: Twisted fails the command with the caller's consumer attached.
            self._consumer = self._consumer.consumer
        return super().state_LONG_INITIAL(line)

    def _protocol_violation(self, line: bytes, what: str = "where +OK or -ERR was expected") -> str:
        waiting, self._waiting = self._waiting, None
        self._consumer = self._xform = None
        if waiting is not None:
            waiting.errback(UpstreamProtocolError(f"{self.host} sent {line[:80]!r} {what}"))
        self.abort()
        return "WAITING"

    def lineReceived(self, line: bytes) -> None:
        # After an abort, lines already read in the same chunk must not reach the state
        # machine (TCP's abortConnection does not stop the reading loop).
        if not self._aborted:
            super().lineReceived(line)

    # ---- reading: lines, or raw chunks while a RETR body streams ------------------------

    _body: DotStuffedBody | None = None

    def dataReceived(self, data: bytes) -> None:
        """Split status and listing lines on CRLF (RFC 1939 §3) like Twisted's
        ``LineOnlyReceiver``, except that a RETR body is handed to :class:`DotStuffedBody`
        in whole chunks once its ``+OK`` line is read, and the octets after its
        terminator go back to line reading (nothing a server sent ahead is lost)."""
        if self._aborted or self.transport.disconnecting:
            return  # nothing more is read from a connection being dropped
        if self._body is not None:
            rest = self._body_received(data)
            if rest is None:
                return
            data = rest
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos = 0
        while True:
            if self._aborted or self.transport.disconnecting:
                return  # nothing more is read from a connection being dropped
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            line = buffer[pos:end]
            pos = end + 2
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)
            if self._body is not None:  # that line was the +OK of a streamed RETR
                rest = self._body_received(buffer[pos:])
                if rest is None:
                    return
                buffer, pos = rest, 0
        tail = buffer[pos:]
        # A CR at the very end may be the first half of the CRLF that ends the line.
        if len(tail) - tail.endswith(b"\r") > self.MAX_LENGTH:
            self.lineLengthExceeded(tail)
            return
        self._buffer = tail

    def _body_received(self, data: bytes) -> bytes | None:
        """Feed one chunk of a streamed RETR body: one timer reset and at most one
        consumer call per chunk. Returns the octets after the body once it ended."""
        body = self._body
        assert body is not None and isinstance(self._consumer, _StreamedRetr)
        if self.timeout > 0:
            self.resetTimeout()
        try:
            piece, rest = body.feed(data)
        except BodyLineTooLong:
            self._body = None
            self.lineLengthExceeded(b"")  # fails the RETR with LineTooLong, drops the link
            return None
        if piece is not None:
            self._consumer.consumer(piece)
            if self._aborted:  # the consumer dropped the connection (message far too large)
                return None
        if rest is None:
            return None
        consumer, deferred = self._consumer.consumer, self._waiting
        self._body = None
        self._consumer = self._waiting = self._xform = None
        # As Twisted's state_LONG does at ".": the next queued command may be sent (and
        # set its own state) by _unblock or by whoever waits on this RETR.
        self.state = "WAITING"
        self._unblock()
        if deferred is not None:
            deferred.callback(consumer)
        return rest

    def retrieve(
        self,
        index: int,
        consumer: Callable[[bytes], object] | None = None,
        lines: int | None = None,
    ) -> defer.Deferred[Any]:
        """RETR message ``index`` (0-based; RFC 1939 §5), read in chunks.

        Unlike Twisted's ``retrieve``, ``consumer`` is called with *runs* of lines: each
        call gets one or more whole dot-unstuffed lines joined by CRLF, without the final
        CRLF, so appending CRLF to every call's octets and concatenating them rebuilds the
        message exactly (what :class:`gateway.pop3.fetcher.MessageSink` does). A line over
        :data:`MAX_LINE_LENGTH` fails the command with Twisted's ``LineTooLong`` and drops
        the connection, as before. Without a consumer the result is the list of lines.
        With ``lines`` (TOP) Twisted's line-by-line path is used unchanged."""
        if lines is not None:
            return super().retrieve(index, consumer, lines)
        number = b"%d" % (index + 1,)
        if consumer is None:
            collected: list[bytes] = []
            d = self.sendLong(
                b"RETR", number, _StreamedRetr(lambda p: collected.extend(p.split(b"\r\n"))), None
            )
            return d.addCallback(lambda _: collected)
        return self.sendLong(b"RETR", number, _StreamedRetr(consumer), None)

    def login(self, username: bytes, password: bytes) -> defer.Deferred[Any]:
        """Refused: the inherited login() may choose APOP in cleartext; use :func:`login`."""
        raise NotImplementedError("use gateway.pop3.client.login(), which never guesses")

    @property
    def secure(self) -> bool:
        """True once the transport is TLS (implicit, or after a successful STLS)."""
        return bool(self.startedTLS) or interfaces.ISSLTransport.providedBy(self.transport)

    def abort(self) -> None:
        """Drop the connection at once without QUIT: pending DELEs never take effect."""
        self._aborted = True
        if self.connected_now and self.transport is not None:
            self.transport.abortConnection()

    # ---- commands answering raw lines, for the sans-I/O parsers in plan.py ------------

    def long_lines(
        self,
        command: bytes,
        args: bytes | None = None,
        *,
        max_lines: int = MAX_LISTING_LINES,
        max_line_length: int = MAX_LISTING_LINE_LENGTH,
    ) -> defer.Deferred[list[bytes]]:
        """Send a multi-line command and collect its lines unparsed (Twisted's own
        UIDL/LIST parsers raise inside the protocol on a malformed line).

        Bounded: a line longer than ``max_line_length`` is kept as an empty line (which
        the listing parser rejects as malformed), and more than ``max_lines`` lines drop
        the connection with :class:`UpstreamProtocolError`."""
        lines: list[bytes] = []

        def collect(line: bytes) -> None:
            if len(lines) >= max_lines:
                if self._waiting is not None:
                    self._protocol_violation(b"", f"in a listing over {max_lines} lines")
                return
            lines.append(line if len(line) <= max_line_length else b"")

        d = self.sendLong(command, args, collect, None)
        d.addCallback(lambda _: lines)
        return d


class _UpstreamFactory(Factory):
    def __init__(self, reactor: Any, host: str, timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._timeout = timeout

    def buildProtocol(self, addr: Any) -> UpstreamClient:
        client = UpstreamClient(self._reactor, self._host, self._timeout)
        client.factory = self
        return client


# ---- TLS --------------------------------------------------------------------------


def trust_root(ca_file: str | None) -> Any:
    """The trust anchors for verifying an upstream: ``ca_file`` (every PEM certificate in
    it) when given, else the system store (:func:`twisted.internet.ssl.platformTrust`)."""
    if ca_file is None:
        return ssl.platformTrust()
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as e:
        raise UpstreamConfigError(f"cannot read ca_file {ca_file}: {e.strerror}") from None
    blocks = _PEM_CERT_RE.findall(pem)
    if not blocks:
        raise UpstreamConfigError(f"ca_file {ca_file} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise UpstreamConfigError(f"ca_file {ca_file}: bad certificate: {e}") from None
    return ssl.trustRootFromCertificates(certificates)


def client_tls_options(upstream: Upstream) -> Any:
    """Client TLS options that verify the chain against :func:`trust_root` and the
    certificate against ``upstream.host`` (DNS name or IP literal, RFC 6125 §6)."""
    return ssl.optionsForClientTLS(upstream.host, trustRoot=trust_root(upstream.ca_file))


# ---- connect and login ------------------------------------------------------------


async def _connect(upstream: Upstream, reactor: Any) -> UpstreamClient:
    host = upstream.host
    if upstream.tls not in ("implicit", "starttls", "none"):
        raise UpstreamConfigError(f"unknown tls mode {upstream.tls!r}")
    if upstream.tls == "none" and not is_loopback_host(host) and not upstream.allow_plaintext:
        raise UpstreamConfigError(f'tls = "none" to {host} would send the password in clear')
    options = client_tls_options(upstream) if upstream.tls != "none" else None

    endpoint: Any = HostnameEndpoint(reactor, host, upstream.port, timeout=upstream.timeout)
    if upstream.tls == "implicit":
        endpoint = wrapClientTLS(options, endpoint)
    factory = _UpstreamFactory(reactor, host, upstream.timeout)
    try:
        client: UpstreamClient = await endpoint.connect(factory)
    except Exception as e:
        raise translate_failure(e, host, "connect") from None

    try:
        try:
            await client.greeting
        except Exception as e:
            raise translate_failure(e, host, "greeting") from None
        if upstream.tls == "starttls":
            await _start_tls(client, options, host)
        if upstream.tls != "none" and not client.secure:
            raise InsecureLoginRefused(f"connection to {host} is not encrypted")
    except BaseException:
        client.abort()
        raise
    return client


async def _start_tls(client: UpstreamClient, options: Any, host: str) -> None:
    """STLS, RFC 2595 §4: only if offered in CAPA, with verifying options, and the
    capability cache dropped afterwards (Twisted re-reads CAPA over TLS)."""
    try:
        caps = await client.capabilities(useCache=False)
    except Exception as e:
        raise translate_failure(e, host, "CAPA") from None
    if b"STLS" not in caps:
        raise StartTLSUnavailable(f"{host} does not offer STLS; refusing to log in without TLS")
    try:
        await client.startTLS(options)
    except Exception as e:
        raise translate_failure(e, host, "STLS") from None


def connect(upstream: Upstream, reactor: Any) -> defer.Deferred[UpstreamClient]:
    """Connect to ``upstream`` and return a client past the greeting and, for
    "implicit" and "starttls", on a verified TLS connection. Nothing is sent before TLS
    except, for "starttls", CAPA and STLS. Fails with a :class:`FetchError`."""
    return defer.Deferred.fromCoroutine(_connect(upstream, reactor))


async def _login(client: UpstreamClient, upstream: Upstream) -> None:
    host = upstream.host
    if upstream.tls != "none" and not client.secure:
        raise InsecureLoginRefused(f"refusing to send credentials to {host} without TLS")
    user = upstream.username.encode("utf-8")
    password = upstream.password.encode("utf-8")
    mechanism = upstream.auth
    if mechanism in ("auto", "plain"):
        mechanism = await _choose_mechanism(client, upstream)
    try:
        if mechanism == "apop":
            # RFC 1939 §7: only when configured; the digest is MD5(challenge + secret).
            if client.serverChallenge is None:
                raise LoginFailed(f"{host} offered no APOP challenge in its greeting")
            digest = hashlib.md5(client.serverChallenge + password).hexdigest()
            await client.apop(user, digest.encode("ascii"))
        elif mechanism == "plain":
            # RFC 5034 §4 with an initial response (RFC 4616 message).
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            await client.sendShort(b"AUTH", b"PLAIN " + token)
        else:
            # USER/PASS (RFC 1939 §7), never APOP by guesswork.
            await client.user(user)
            await client.password(password)
    except ServerErrorResponse as e:
        raise LoginFailed(f"{host} refused the login: {_server_text(e)}") from None
    except FetchError:
        raise
    except Exception as e:
        raise translate_failure(e, host, "login") from None


async def _choose_mechanism(client: UpstreamClient, upstream: Upstream) -> str:
    """ "auto": SASL PLAIN (RFC 5034) when CAPA (RFC 2449, read again over TLS) offers it,
    else USER/PASS. "plain": SASL PLAIN, refused up front when CAPA answers without
    offering it (a server without CAPA is simply tried)."""
    try:
        # After STLS Twisted has already re-read CAPA over TLS (RFC 2595 §4: the list
        # from before TLS must be discarded), so that cached answer is the one to trust.
        caps = await client.capabilities(useCache=bool(client.startedTLS))
    except Exception as e:
        raise translate_failure(e, upstream.host, "CAPA") from None
    offered = [m.upper() for m in (caps.get(b"SASL") or [])]
    if b"PLAIN" in offered:
        return "plain"
    if upstream.auth == "plain":
        if caps:
            raise LoginFailed(f'{upstream.host} does not offer SASL PLAIN (auth = "plain")')
        return "plain"
    return "user"


def login(client: UpstreamClient, upstream: Upstream) -> defer.Deferred[None]:
    """Authenticate with the configured mechanism (USER/PASS, APOP, AUTH PLAIN, or for
    "auto" AUTH PLAIN when offered else USER/PASS; APOP only when configured);
    fails with :class:`LoginFailed` (or another :class:`FetchError`)."""
    return defer.Deferred.fromCoroutine(_login(client, upstream))
