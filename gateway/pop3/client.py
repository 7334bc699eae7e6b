"""The POP3 client protocol on one upstream connection: bounded lines, per-step timeouts,
RETR bodies read in chunks. Opening the connection (TLS, login) is :mod:`gateway.pop3.connect`.

Built on :class:`twisted.mail.pop3.AdvancedPOP3Client`, with its traps closed
(see TWISTED-NOTES.md):

- its 16 KB line limit drops real mail, so :data:`~gateway.pop3.framing.MAX_LINE_LENGTH`
  raises it and the fetcher bounds the message size itself;
- it has no timeout by default, so every step gets one (``upstream.timeout`` seconds
  without a line from the server aborts the connection);
- ``login()`` would pick APOP whenever the greeting carries a challenge, in cleartext and
  before STLS, and ``startTLS()`` without options verifies nothing. Neither is used:
  :func:`gateway.pop3.connect.connect` sets up TLS with certificate and host-name
  verification (RFC 2595 §2.4, RFC 6125 §6) and :func:`gateway.pop3.connect.login` sends
  exactly the configured mechanism, refusing to send credentials on a connection that
  should be encrypted but is not.

RETR bodies do not go through the line-by-line path: after the ``+OK`` the client reads
raw chunks (:class:`gateway.pop3.framing.DotStuffedBody`, sans-I/O) and hands the consumer
whole runs of lines, one call and one timer reset per chunk instead of per line (see
:meth:`UpstreamClient.retrieve`).

RETRs are pipelined when the server announces ``PIPELINING`` in CAPA (RFC 2449 §6.6): a
RETR queued behind others is written at once instead of when its turn comes (the answers
still arrive, and are read, strictly in order), so the server is already sending the
next message while this one is stored, and several RETR lines go out in one write
(see :meth:`UpstreamClient.retrieve` and
:data:`gateway.pop3.retrieval.PIPELINE_DEPTH`).

Errors reach callers as :class:`gateway.pop3.errors.FetchError` subclasses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, interfaces
from twisted.mail.pop3 import AdvancedPOP3Client, ServerErrorResponse
from twisted.mail.pop3 import LineTooLong as TwistedLineTooLong
from twisted.python.failure import Failure

from gateway.pop3.errors import UpstreamProtocolError
from gateway.pop3.framing import MAX_LINE_LENGTH, BodyLineTooLong, DotStuffedBody, is_status_line

MAX_LISTING_LINES = 1_000_000
"""Most lines accepted in a UIDL or LIST answer (one per message in the maildrop)."""

MAX_LISTING_LINE_LENGTH = 1024
"""Longest UIDL/LIST line kept; a number, a space and a 70-character UIDL need far less."""


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
    login_delay = 0.0
    """CAPA ``LOGIN-DELAY`` seconds once :func:`gateway.pop3.connect.login` has read CAPA."""
    pipelining = False
    """Whether CAPA announced ``PIPELINING`` (RFC 2449 §6.6), set by
    :func:`gateway.pop3.connect.login` when it reads CAPA; off for a server that has no
    CAPA or was not asked."""

    def __init__(self, reactor: Any, host: str, timeout: float) -> None:
        self._reactor = reactor
        self.host = host
        self.timeout = timeout
        self.greeting: defer.Deferred[bytes] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.connected_now = False
        self._aborted = False
        self._sent_ahead: deque[bytes] = deque()
        """Lines of queued commands already written (pipelined), oldest first."""

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
        respond = self._sasl_respond
        if respond is not None and (line == b"+" or line.startswith(b"+ ")):
            # RFC 5034 §4: a continuation inside AUTH; answer it and keep waiting.
            if self.timeout > 0:
                self.resetTimeout()
            self.sendLine(respond(line[2:]))
            return "SHORT"
        self._sasl_respond = None
        if not is_status_line(line):
            return self._protocol_violation(line)
        return super().state_SHORT(line)

    def state_LONG_INITIAL(self, line: bytes) -> str:
        if not is_status_line(line):
            return self._protocol_violation(line)
        if isinstance(self._consumer, _StreamedRetr):
            if line.split(b" ", 1)[0] == b"+OK":
                # dataReceived hands everything from here to the body reader.
                self._body = DotStuffedBody(self.MAX_LENGTH)
                return "RETR_BODY"
            # -ERR: Twisted fails the command with the caller's consumer attached.
            self._consumer = self._consumer.consumer
        return super().state_LONG_INITIAL(line)

    def _protocol_violation(self, line: bytes) -> str:
        return self._fail_command(
            UpstreamProtocolError(f"{self.host} sent {line[:80]!r} where +OK or -ERR was expected")
        )

    def _fail_command(self, reason: Exception) -> str:
        """Fail the command in flight with ``reason`` and drop the connection."""
        waiting, self._waiting = self._waiting, None
        self._consumer = self._xform = None
        if waiting is not None:
            waiting.errback(reason)
        self.abort()
        return "WAITING"

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over :data:`MAX_LINE_LENGTH`: the command in flight fails with Twisted's
        ``LineTooLong`` (Twisted's own handling), and so does a greeting still awaited,
        which Twisted would report as a closed connection."""
        if not self.greeting.called:
            self.greeting.errback(TwistedLineTooLong())
        super().lineLengthExceeded(line)

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
        message exactly (what :class:`gateway.pop3.spool.MessageSink` does). A line over
        :data:`~gateway.pop3.framing.MAX_LINE_LENGTH` fails the command with Twisted's
        ``LineTooLong`` and drops the connection, as before. Without a consumer the result is the list of lines.
        With ``lines`` (TOP) Twisted's line-by-line path is used unchanged."""
        if lines is not None:
            return super().retrieve(index, consumer, lines)
        number = b"%d" % (index + 1,)
        self._send_ahead(b"RETR " + number)
        if consumer is None:
            collected: list[bytes] = []
            d = self.sendLong(
                b"RETR", number, _StreamedRetr(lambda p: collected.extend(p.split(b"\r\n"))), None
            )
            return d.addCallback(lambda _: collected)
        return self.sendLong(b"RETR", number, _StreamedRetr(consumer), None)

    def sendLine(self, line: bytes) -> None:
        """Twisted writes a queued command's line when its turn comes; a pipelined one
        was written already (:meth:`_send_ahead`), in the same order, so it is not
        written twice."""
        if self._sent_ahead and self._sent_ahead[0] == line:
            self._sent_ahead.popleft()
            return
        super().sendLine(line)

    def _send_ahead(self, line: bytes) -> bool:
        """Write a command's line now although it will be queued behind the command in
        flight, when the server pipelines (RFC 2449 §6.6) and every command queued
        before it went out the same way (so the order on the wire is the queue's)."""
        queued = self._blockedQueue
        if (
            not self.pipelining
            or queued is None
            or len(queued) != len(self._sent_ahead)
            or self._aborted
            or not self.connected_now
        ):
            return False
        super().sendLine(line)
        self._sent_ahead.append(line)
        return True

    _sasl_respond: Callable[[bytes], bytes] | None = None

    def sasl(self, arguments: bytes, respond: Callable[[bytes], bytes]) -> defer.Deferred[bytes]:
        """``AUTH arguments`` (RFC 5034 §4): each ``+ `` continuation until the final
        status line is answered with ``respond(challenge)``. Fires with the +OK text or
        fails with ``ServerErrorResponse``. Only for the login step (nothing else queued)."""
        self._sasl_respond = respond
        return self.sendShort(b"AUTH", arguments)

    def login(self, username: bytes, password: bytes) -> defer.Deferred[Any]:
        """Refused: the inherited login() may choose APOP in cleartext; use :func:`login`."""
        raise NotImplementedError("use gateway.pop3.connect.login(), which never guesses")

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
        max_lines: int | None = None,
        max_line_length: int = MAX_LISTING_LINE_LENGTH,
    ) -> defer.Deferred[list[bytes]]:
        """Send a multi-line command and collect its lines unparsed (Twisted's own
        UIDL/LIST parsers raise inside the protocol on a malformed line).

        Bounded: a line longer than ``max_line_length`` is kept as an empty line (which
        the listing parser rejects as malformed), and more than ``max_lines`` (default
        :data:`MAX_LISTING_LINES`) lines drop the connection with
        :class:`UpstreamProtocolError`."""
        lines: list[bytes] = []
        if max_lines is None:
            max_lines = MAX_LISTING_LINES

        def collect(line: bytes) -> None:
            if len(lines) >= max_lines:
                if self._waiting is not None:
                    self._fail_command(
                        UpstreamProtocolError(
                            f"{self.host} sent more than {max_lines} lines in a"
                            f" {command.decode('ascii', 'replace')} listing"
                        )
                    )
                return
            lines.append(line if len(line) <= max_line_length else b"")

        d = self.sendLong(command, args, collect, None)
        d.addCallback(lambda _: lines)
        return d
