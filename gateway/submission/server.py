"""The submission server's transport glue: the only submission module that touches a
socket or a reactor for incoming connections.

It feeds received bytes to the sans-I/O :class:`~gateway.submission.parser.SMTPParser`,
runs one command at a time through :meth:`SubmissionSession.execute` (so PIPELINING,
RFC 2920, keeps replies in order even when a step waits on a thread or the store), and
performs the session's actions: password checks through ``run_blocking`` with the
shared login penalty (the same :class:`~gateway.security.penalty.AuthPenalty` as IMAP,
so failures on either protocol count together), SASL lines, DATA bodies, the ``accept``
call, STARTTLS (buffered plaintext discarded first), close.

Bounds: per-source connection cap; pending pipelined input capped (reading pauses);
timers before login, after login and during DATA (RFC 5321 §4.5.3.2) on an injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.security.auth import Authenticator
from gateway.security.connections import ConnectionCounts, ListenerPolicy, peer_address
from gateway.security.connections import ListenerFactory as SharedListenerFactory
from gateway.security.logins import LoginLimits
from gateway.security.penalty import AuthPenalty, LoginAttempt
from gateway.submission.parser import (
    Line,
    LineTooLong,
    MessageData,
    MessageTooLarge,
    NeedData,
    SMTPParser,
)
from gateway.submission.policy import RateLimiter, Refusal, SenderPolicy, SubmissionLimits
from gateway.submission.session import (
    Accept,
    Call,
    Close,
    ReadData,
    ReadLine,
    RunBlocking,
    StartTLS,
    SubmissionSession,
    reply,
)

log = structlog.get_logger(__name__)

RunBlockingFn = Callable[[Callable[[], Any]], Deferred]

MAX_BUFFERED_INPUT = 256 * 1024
"""Unparsed pipelined command input held while a command runs before reading pauses."""


class SubmissionProtocol(Protocol):
    """One submission connection."""

    session: SubmissionSession
    parser: SMTPParser

    def __init__(self, factory: SubmissionFactory, policy: ListenerPolicy | None = None) -> None:
        self.factory = factory
        self.policy = policy if policy is not None else ListenerPolicy()
        self.peer = "unknown"
        self.peer_host = "local"
        self._counted = False
        self._login_limits = LoginLimits(
            factory,
            protocol="submission",
            refused=lambda: Refusal(454, "4.7.0", "Too many failed logins; try again later"),
            over_limit=None,
        )
        self._current: Any = None
        self._waiting: Any = None
        self._send: Any = None
        self._throw: BaseException | None = None
        self._token: object | None = None
        self._closing = False
        self._busy = False
        self._again = False
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._delay: IDelayedCall | None = None

    # -- lifetime --

    def connectionMade(self) -> None:
        factory = self.factory
        self.peer_host, self.peer = peer_address(self.transport)
        if not factory.admit_source(self.peer_host):
            self._closing = True
            log.warning("submission.connection_refused", peer=self.peer, reason="per_ip_limit")
            self.transport.write(reply(421, "4.7.0", "Too many connections from your address"))
            self.transport.loseConnection()
            return
        self._counted = True
        self.session = SubmissionSession(
            hostname=factory.hostname,
            policy=factory.policy,
            limits=factory.limits,
            authenticator=factory.authenticator,
            rate=factory.rate,
            accept=factory.accept,
            now=factory.clock.seconds,
            peer=self.peer,
            tls_active=self.policy.implicit_tls or ISSLTransport.providedBy(self.transport),
            tls_available=factory.tls_context_factory is not None,
            plaintext_auth_allowed=self.policy.plaintext_auth_or(factory.allow_plaintext_auth),
        )
        self.parser = SMTPParser(factory.limits.max_command_line)
        factory.protocols.add(self)
        log.info("submission.connect", peer=self.peer)
        self.transport.write(self.session.greeting())
        self._reset_timeout()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self._drop_current()
        self._cancel_timers()
        self.factory.protocols.discard(self)
        if self._counted:
            self._counted = False
            self.factory.release_source(self.peer_host)
        log.info("submission.disconnect", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.parser.receive_data(data)
        if self.parser.in_data:
            self._reset_timeout()
        self._run()

    # -- the engine (as in the ManageSieve glue) --

    def _run(self) -> None:
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            while True:
                self._again = False
                self._pump_input()
                self._advance()
                if not self._again or self._closing:
                    break
        finally:
            self._busy = False
        self._update_reading()

    def _pump_input(self) -> None:
        if self._closing:
            return
        waiting = self._waiting
        if isinstance(waiting, ReadLine | ReadData):
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                return
            self._waiting = None
            self.parser.max_line = self.factory.limits.max_command_line
            if isinstance(event, Line):
                self._send = event.text
            elif isinstance(event, MessageData):
                self._send = event.raw
            elif isinstance(event, MessageTooLarge):
                self._send = event
            else:
                self._throw = Refusal(500, "5.5.6", "Line too long")
            self._reset_timeout()
            return
        if self._current is not None:
            return
        event = self.parser.next_event()
        if isinstance(event, NeedData):
            return
        self._reset_timeout()
        if isinstance(event, Line):
            self._start(self.session.execute(event.text))
        elif isinstance(event, LineTooLong):
            self.transport.write(self.session.line_too_long())
            self._again = True

    def _start(self, run: Any) -> None:
        self._current, self._send, self._throw, self._waiting = run, None, None, None

    def _advance(self) -> None:
        while not self._closing and self._current is not None and self._waiting is None:
            try:
                if self._throw is not None:
                    error, self._throw = self._throw, None
                    out = self._current.throw(error)
                else:
                    value, self._send = self._send, None
                    out = self._current.send(value)
            except StopIteration:
                self._current = None
                self._reset_timeout()
                self._again = True
                return
            except Exception:
                log.exception("submission.internal_error", peer=self.peer)
                self._current = None
                self.transport.write(reply(421, "4.3.0", "Internal error, closing connection"))
                self._close()
                return
            if isinstance(out, bytes):
                self.transport.write(out)
            else:
                self._perform(out)

    def _perform(self, action: Any) -> None:
        if isinstance(action, RunBlocking):
            self._waiting = action
            token = self._token = object()
            refused = self._login_limits.begin(self.peer_host, self.peer, action.login)
            if refused is not None:
                self._resume_later(refused[0], token, refused[1], refused[2])
                return
            attempt = self._login_limits.attempt
            try:
                deferred = self.factory.run_blocking(action.call)
            except Exception as e:
                deferred = Deferred()
                deferred.errback(e)
            deferred.addCallbacks(
                self._password_checked,
                self._check_failed,
                callbackArgs=(attempt, token),
                errbackArgs=(attempt, token),
            )
        elif isinstance(action, Call):
            self._waiting = action
            token = self._token = object()
            d = maybeDeferred(action.fn, *action.args)
            d.addCallbacks(
                self._resume_ok, self._failed, callbackArgs=(token,), errbackArgs=(token,)
            )
        elif isinstance(action, ReadLine):
            self._waiting = action
            self.parser.max_line = self.factory.limits.max_sasl_line
            self._again = True
        elif isinstance(action, ReadData):
            self._waiting = action
            self.parser.expect_data(action.max_size)
            self._reset_timeout()
            self._again = True
        elif isinstance(action, StartTLS):
            # CVE-2011-0411: plaintext pipelined behind STARTTLS is never executed.
            self.parser = SMTPParser(self.factory.limits.max_command_line)
            self.transport.startTLS(self.factory.tls_context_factory)
        elif isinstance(action, Close):
            self._close()
        else:  # pragma: no cover - the session yields nothing else
            raise TypeError(f"unknown session action {action!r}")

    def _resume(self, token: object, result: Any, error: BaseException | None) -> None:
        self._delay = None
        if self._token is not token or self._closing:
            return
        self._token = None
        self._waiting = None
        if error is not None:
            self._throw = error
        else:
            self._send = result
        self._run()

    def _resume_ok(self, result: Any, token: object) -> None:
        self._resume(token, result, None)

    def _failed(self, failure: Failure, token: object) -> None:
        self._resume(token, None, failure.value)

    def _resume_later(self, delay: float, token: object, result: Any, error: Any) -> None:
        if delay <= 0:
            self._resume(token, result, error)
        else:
            self._delay = self.factory.clock.callLater(delay, self._resume, token, result, error)

    def _password_checked(
        self, canonical: str | None, attempt: LoginAttempt | None, token: object
    ) -> None:
        if self._token is not token or self._closing:
            # The command is gone (the client hung up): a password check still counts.
            self._login_limits.settle(attempt, canonical)
            return
        waiting = self._waiting
        assert isinstance(waiting, RunBlocking)
        limits = self._login_limits
        delay, user, error = limits.checked(self.peer_host, self.peer, waiting.login, canonical)
        self._resume_later(delay, token, user, error)

    def _check_failed(self, failure: Failure, attempt: LoginAttempt | None, token: object) -> None:
        self._login_limits.abandon(attempt)
        self._failed(failure, token)

    # -- reading, closing, timers --

    def _update_reading(self) -> None:
        if self._closing:
            return
        hold = (
            self._current is not None
            and not isinstance(self._waiting, ReadLine | ReadData)
            and self.parser.buffered_size >= MAX_BUFFERED_INPUT
        )
        if hold != self._paused:
            self._paused = hold
            if hold:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _drop_current(self) -> None:
        current, self._current = self._current, None
        self._waiting = None
        self._token = None
        if current is not None:
            current.close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timers()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self.transport.loseConnection()

    def _reset_timeout(self) -> None:
        if self._closing:
            return
        limits = self.factory.limits
        if isinstance(self._waiting, ReadData):
            delay = limits.data_timeout
        elif self.session.user is None:
            delay = limits.prelogin_timeout
        else:
            delay = limits.idle_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.factory.clock.callLater(delay, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._closing:
            return
        log.info("submission.timeout", user=self.session.user, peer=self.peer)
        self._drop_current()
        self.transport.write(self.session.timed_out())
        self._close()

    def _cancel_timers(self) -> None:
        for name in ("_timer", "_delay"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()


class SubmissionFactory(ConnectionCounts, Factory):
    """Builds :class:`SubmissionProtocol` connections sharing one sender policy, rate
    limiter, authenticator and login penalty.

    ``accept(submission)`` commits a :class:`~gateway.submission.session.Submission`
    (queue row and Sent copy) and returns its queue id or a Deferred of it; the client
    gets 250 only after it returns. ``run_blocking(call) -> Deferred`` runs password
    checks off the reactor thread. ``penalty`` should be the IMAP factory's.
    ``policy`` may be replaced on reload (new sessions use the new one).
    """

    def __init__(
        self,
        *,
        policy: SenderPolicy,
        authenticator: Authenticator,
        accept: Accept,
        reactor: Any,
        run_blocking: RunBlockingFn,
        hostname: str = "localhost",
        limits: SubmissionLimits | None = None,
        tls_context_factory: Any = None,
        allow_plaintext_auth: bool = False,
        clock: IReactorTime | None = None,
        penalty: AuthPenalty | None = None,
    ) -> None:
        self.policy = policy
        self.authenticator = authenticator
        self.accept = accept
        self.reactor = reactor
        self.run_blocking = run_blocking
        self.hostname = hostname
        self.limits = limits if limits is not None else SubmissionLimits()
        self.tls_context_factory = tls_context_factory
        self.allow_plaintext_auth = allow_plaintext_auth
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.penalty = penalty
        self.rate = RateLimiter(self.limits.max_messages_per_hour)
        self.protocols: set[SubmissionProtocol] = set()
        ConnectionCounts.__init__(self)

    def buildProtocol(self, addr: Any) -> SubmissionProtocol:
        protocol = SubmissionProtocol(self)
        protocol.factory = self
        return protocol


class ListenerFactory(SharedListenerFactory):
    """One listener's view of the shared :class:`SubmissionFactory` (its own
    :class:`ListenerPolicy`: ``submission`` with STARTTLS or ``submissions``)."""

    protocol = SubmissionProtocol
